// The idiomatic Kotlin API over the generated bindings (`uniffi.trailmark_ffi`). Marshalling
// only: every decision is the Rust core's.
package dev.trailmark

import java.net.HttpURLConnection
import java.net.URL
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.delay
import kotlinx.coroutines.withContext
import uniffi.trailmark_ffi.Attribution
import uniffi.trailmark_ffi.Consent
import uniffi.trailmark_ffi.HttpResponse
import uniffi.trailmark_ffi.HttpTransport
import uniffi.trailmark_ffi.SdkStats
import uniffi.trailmark_ffi.TrailmarkConfig
import uniffi.trailmark_ffi.TrailmarkSdk

/** A running SDK. Recording calls return at once and never throw; `flush` suspends. */
class Trailmark private constructor(private val sdk: TrailmarkSdk) : AutoCloseable {
    companion object {
        /** The SDK's name and version on the wire unless the config says otherwise. */
        const val SDK_NAME = "trailmark-kotlin"
        const val SDK_VERSION = "0.1.0"

        /** Opens the queue and starts the SDK. Throws `TrailmarkException` for a bad config. */
        @JvmStatic
        @JvmOverloads
        fun start(config: TrailmarkConfig, transport: HttpTransport? = UrlConnectionTransport()): Trailmark =
            Trailmark(TrailmarkSdk.start(
                config.copy(sdkName = config.sdkName ?: SDK_NAME, sdkVersion = config.sdkVersion ?: SDK_VERSION),
                transport,
            ))

        /** SHA-256 of a normalised email, as the SDK sends it. Throws `TrailmarkException.InvalidInput`. */
        @JvmStatic
        fun hashEmail(email: String): String = uniffi.trailmark_ffi.hashEmail(email)
    }

    fun track(event: String, properties: Map<String, Any?> = emptyMap()) = sdk.track(event, Json.encode(properties))

    fun screen(name: String, properties: Map<String, Any?> = emptyMap()) = sdk.screen(name, Json.encode(properties))

    /** `traits` may carry `email` and `phone`: the core hashes them before they leave the device. */
    fun identify(userId: String, traits: Map<String, Any?> = emptyMap()) = sdk.identify(userId, Json.encode(traits))

    fun setConsent(analytics: Boolean? = null, attribution: Boolean? = null, doNotSell: Boolean? = null) =
        sdk.setConsent(Consent(analytics, attribution, doNotSell))

    fun optOut() = sdk.optOut()

    fun optIn() = sdk.optIn()

    fun reset() = sdk.reset()

    fun handleOpenUrl(url: String) = sdk.handleOpenUrl(url)

    fun onForeground() = sdk.onForeground()

    fun onBackground() = sdk.onBackground()

    /** Suspends until every earlier call is on disk, and asks for an upload. */
    suspend fun flush() = withContext(Dispatchers.IO) { sdk.flush() }

    suspend fun anonymousId(): String = withContext(Dispatchers.IO) { sdk.anonymousId() }

    /**
     * The install's attribution: suspends until the server answered the SDK's install request,
     * or returns null after [timeoutMs] (offline, consent not given, or no install request).
     */
    suspend fun attribution(timeoutMs: Long = 30_000): Attribution? = withContext(Dispatchers.IO) {
        val deadline = System.currentTimeMillis() + timeoutMs
        var result = sdk.attribution()
        while (result == null && System.currentTimeMillis() < deadline) {
            delay(50)
            result = sdk.attribution()
        }
        result
    }

    /** The Play Install Referrer (see the Android source set), or null when there is none. */
    fun setInstallReferrer(referrer: String?, referrerClickTsMs: Long? = null, installBeginTsMs: Long? = null) =
        sdk.setInstallReferrer(referrer, referrerClickTsMs, installBeginTsMs)

    fun stats(): SdkStats = sdk.stats()

    override fun close() = sdk.destroy()
}

/** Uploads with `HttpURLConnection` (Android and the JVM). Runs on the SDK's uploader thread. */
class UrlConnectionTransport(private val timeoutMs: Int = 30_000) : HttpTransport {
    override fun post(url: String, headers: Map<String, String>, body: ByteArray): HttpResponse =
        try {
            val c = URL(url).openConnection() as HttpURLConnection
            c.requestMethod = "POST"
            c.doOutput = true
            c.connectTimeout = timeoutMs
            c.readTimeout = timeoutMs
            headers.forEach { (k, v) -> c.setRequestProperty(k, v) }
            c.outputStream.use { it.write(body) }
            val status = c.responseCode
            val stream = if (status >= 400) c.errorStream else c.inputStream
            val answer = stream?.use { it.readBytes() } ?: ByteArray(0)
            HttpResponse(status.toUShort(), c.getHeaderField("Retry-After"), answer, null)
        } catch (e: Exception) {
            HttpResponse(0u, null, ByteArray(0), e.toString())
        }
}

/** Just enough JSON for event properties: strings, numbers, booleans, null, maps and lists. */
internal object Json {
    fun encode(value: Any?): String = StringBuilder().also { write(it, value) }.toString()

    private fun write(out: StringBuilder, v: Any?) {
        when (v) {
            null -> out.append("null")
            is String -> string(out, v)
            is Boolean -> out.append(v)
            is Int, is Long, is Short, is Byte -> out.append(v)
            is Double -> out.append(if (v.isFinite()) v.toString() else "null")
            is Float -> out.append(if (v.isFinite()) v.toString() else "null")
            is Number -> out.append(v.toString())
            is Map<*, *> -> {
                out.append('{')
                v.entries.forEachIndexed { i, (k, value) ->
                    if (i > 0) out.append(',')
                    string(out, k.toString())
                    out.append(':')
                    write(out, value)
                }
                out.append('}')
            }
            is Iterable<*> -> {
                out.append('[')
                v.forEachIndexed { i, value ->
                    if (i > 0) out.append(',')
                    write(out, value)
                }
                out.append(']')
            }
            else -> string(out, v.toString())
        }
    }

    private fun string(out: StringBuilder, s: String) {
        out.append('"')
        for (ch in s) {
            when {
                ch == '"' -> out.append("\\\"")
                ch == '\\' -> out.append("\\\\")
                ch < ' ' -> out.append(String.format("\\u%04x", ch.code))
                else -> out.append(ch)
            }
        }
        out.append('"')
    }
}
