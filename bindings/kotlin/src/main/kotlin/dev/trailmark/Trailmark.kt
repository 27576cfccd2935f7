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
import uniffi.trailmark_ffi.DebugLogger
import uniffi.trailmark_ffi.EventMiddleware
import uniffi.trailmark_ffi.HttpResponse
import uniffi.trailmark_ffi.HttpTransport
import uniffi.trailmark_ffi.SdkStats
import uniffi.trailmark_ffi.TrackingAuthorization
import uniffi.trailmark_ffi.TrailmarkConfig
import uniffi.trailmark_ffi.TrailmarkSdk

/**
 * An event as a middleware sees it (see [Trailmark.addMiddleware]): its type, its properties and
 * the context it will carry (app, device, SDK, consent, group id; read-only).
 */
data class TrailmarkEvent(val type: String, val properties: Map<String, Any?>, val context: Map<String, Any?>)

/** A running SDK. Recording calls return at once and never throw; `flush` suspends. */
class Trailmark private constructor(private val sdk: TrailmarkSdk) : AutoCloseable {
    companion object {
        /** The SDK's name and version on the wire unless the config says otherwise. */
        const val SDK_NAME = "trailmark-kotlin"
        const val SDK_VERSION = "0.1.0"

        /**
         * Opens the queue and starts the SDK. Throws `TrailmarkException` for a bad config. With
         * `debug` in the config, the core's debug lines (one per decision) go to [logger], by
         * default the platform log: `android.util.Log` (tag `Trailmark`) on Android, stderr on
         * the JVM; called on the SDK's worker thread.
         */
        @JvmStatic
        @JvmOverloads
        fun start(
            config: TrailmarkConfig,
            transport: HttpTransport? = UrlConnectionTransport(),
            logger: ((String) -> Unit)? = null,
        ): Trailmark {
            val sdk = TrailmarkSdk.start(
                config.copy(sdkName = config.sdkName ?: SDK_NAME, sdkVersion = config.sdkVersion ?: SDK_VERSION),
                transport,
            )
            if (config.debug) {
                val sink = logger ?: ::platformLog
                sdk.setDebugLogger(object : DebugLogger {
                    // A logger that throws loses its line, never the SDK.
                    override fun log(line: String) {
                        try {
                            sink(line)
                        } catch (e: Throwable) {
                        }
                    }
                })
            }
            return Trailmark(sdk)
        }

        /** `android.util.Log.d("Trailmark", line)` where it exists (looked up once), else stderr. */
        private val androidLog: java.lang.reflect.Method? by lazy {
            try {
                Class.forName("android.util.Log").getMethod("d", String::class.java, String::class.java)
            } catch (e: Exception) {
                null
            }
        }

        private fun platformLog(line: String) {
            val log = androidLog
            if (log != null) log.invoke(null, "Trailmark", line) else System.err.println("[trailmark] $line")
        }

        /** SHA-256 of a normalised email, as the SDK sends it. Throws `TrailmarkException.InvalidInput`. */
        @JvmStatic
        fun hashEmail(email: String): String = uniffi.trailmark_ffi.hashEmail(email)
    }

    /** This SDK's id on the JNI fast path ([FastPath]); 0: the UniFFI calls carry everything. */
    @Volatile
    private var fastId: Long = FastPath.register(sdk)

    @Volatile
    private var closed = false

    /** Whether `track`, `screen` and `identify` take the JNI fast path (for tests). */
    internal val usesFastPath: Boolean get() = fastId != 0L

    internal val fastPathId: Long get() = fastId

    /** From now on, the UniFFI calls only (for tests and the benchmark). */
    internal fun disableFastPath() {
        val id = fastId
        fastId = 0
        if (id != 0L) FastPath.release(id)
    }

    fun track(event: String, properties: Map<String, Any?> = emptyMap()) = record(FastPath.TRACK, event, properties)

    fun screen(name: String, properties: Map<String, Any?> = emptyMap()) = record(FastPath.SCREEN, name, properties)

    /** `traits` may carry `email` and `phone`: the core hashes them before they leave the device. */
    fun identify(userId: String, traits: Map<String, Any?> = emptyMap()) = record(FastPath.IDENTIFY, userId, traits)

    /**
     * One recording call: the name and the properties' JSON in one UTF-8 buffer, through the
     * fast path when there is one, else through UniFFI. Never throws: the core refuses and
     * counts bad input, and a call after [close] does nothing.
     */
    private fun record(kind: Int, name: String, properties: Map<String, Any?>) {
        if (closed) return
        val w = JsonWriter()
        w.text(name)
        val nameLen = w.size
        w.value(properties)
        val id = fastId
        if (id != 0L) {
            val answer = try {
                FastPath.record(id, kind, w.bytes, nameLen, w.size)
            } catch (e: LinkageError) { // the library lacks the entry point after all
                fastId = 0
                FastPath.UNKNOWN_SDK
            }
            // Unknown: closed meanwhile (nothing to do), or not reachable this way (UniFFI).
            // Panicked: the Rust side failed before the call was handed on; UniFFI takes it
            // (where the same failure is counted), so the event is not silently lost.
            if ((answer != FastPath.UNKNOWN_SDK && answer != FastPath.PANICKED) || closed) return
        }
        val n = String(w.bytes, 0, nameLen, Charsets.UTF_8)
        val json = String(w.bytes, nameLen, w.size - nameLen, Charsets.UTF_8)
        try {
            when (kind) {
                FastPath.TRACK -> sdk.track(n, json)
                FastPath.SCREEN -> sdk.screen(n, json)
                else -> sdk.identify(n, json)
            }
        } catch (e: IllegalStateException) { // destroyed by a concurrent close()
            if (!closed) throw e
        }
    }

    fun setConsent(analytics: Boolean? = null, attribution: Boolean? = null, doNotSell: Boolean? = null) =
        sdk.setConsent(Consent(analytics, attribution, doNotSell))

    fun optOut() = sdk.optOut()

    fun optIn() = sdk.optIn()

    /**
     * Puts the user in a group (an account, a company): a `group` event whose properties are
     * [traits] plus `group_id`; the group id rides on every later event's `context.group_id`
     * (kept across launches, cleared by [reset]).
     */
    fun group(groupId: String, traits: Map<String, Any?> = emptyMap()) {
        if (!closed) sdk.group(groupId, Json.encode(traits))
    }

    /**
     * Links the current identity (the user id, or the anonymous id before [identify]) to
     * [newUserId] with an `alias` event; the server then counts both ids as one person.
     */
    fun alias(newUserId: String) {
        if (!closed) sdk.alias(newUserId)
    }

    /**
     * The advertising id known after the start (the GAID once fetched; the Android glue does
     * that), or null when it is gone (limit ad tracking). A pending install request carries the
     * latest; after the install, a new id is sent as an update the server attaches to the device.
     */
    fun setAdvertisingId(id: String?) {
        if (!closed) sdk.setAdvertisingId(id)
    }

    /** The App Tracking Transparency status (iOS apps built with Kotlin Multiplatform). */
    fun setTrackingAuthorization(status: TrackingAuthorization) {
        if (!closed) sdk.setTrackingAuthorization(status)
    }

    /**
     * Adds a middleware, run after those added before on every later `track`, `screen` and
     * `page`, on the caller's thread: it returns the event (changed or not; a changed type is
     * recorded) or null to drop it (counted in `droppedByMiddleware`). One that throws drops
     * the event (counted in `middlewareErrors`); nothing is thrown at the caller.
     */
    fun addMiddleware(middleware: (TrailmarkEvent) -> TrailmarkEvent?) {
        if (closed) return
        sdk.addMiddleware(object : EventMiddleware {
            override fun process(eventJson: String): String? {
                @Suppress("UNCHECKED_CAST")
                val m = JsonReader(eventJson).read() as Map<String, Any?>
                @Suppress("UNCHECKED_CAST")
                val event = TrailmarkEvent(
                    m["type"] as String,
                    m["properties"] as Map<String, Any?>,
                    m["context"] as Map<String, Any?>,
                )
                val out = middleware(event) ?: return null
                return Json.encode(mapOf("type" to out.type, "properties" to out.properties))
            }
        })
    }

    /**
     * Super properties: merged into every later event (the event's own values win), kept across
     * launches, cleared by [reset]. At most 4,096 bytes of JSON.
     */
    fun register(properties: Map<String, Any?>) {
        if (!closed) sdk.register(Json.encode(properties))
    }

    /** Removes one super property. */
    fun unregister(key: String) {
        if (!closed) sdk.unregister(key)
    }

    /** The super properties registered, as a JSON object's text, after every earlier call. */
    suspend fun registeredPropertiesJson(): String = withContext(Dispatchers.IO) { sdk.registeredProperties() }

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

    /**
     * The Play Install Referrer (see the Android source set), or null when there is none;
     * [installedAtMs] is the package's `firstInstallTime` (the server rejects clicks reported
     * after it: click injection).
     */
    fun setInstallReferrer(
        referrer: String?,
        referrerClickTsMs: Long? = null,
        installBeginTsMs: Long? = null,
        installedAtMs: Long? = null,
    ) = sdk.setInstallReferrer(referrer, referrerClickTsMs, installBeginTsMs, installedAtMs)

    fun stats(): SdkStats = sdk.stats()

    /** Stops the SDK (what is queued stays on disk for the next start). Recording calls after it do nothing. */
    override fun close() {
        closed = true
        disableFastPath()
        sdk.destroy()
    }
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

/**
 * Just enough of a JSON reader for text the core wrote (middleware events) and the scenario
 * files: objects become maps, integers Long, other numbers Double.
 */
internal class JsonReader(private val s: String) {
    private var i = 0

    fun read(): Any? = value().also { ws(); require(i == s.length) { "trailing text at $i" } }

    private fun ws() { while (i < s.length && s[i].isWhitespace()) i++ }

    private fun value(): Any? {
        ws()
        return when (s[i]) {
            '{' -> {
                i++
                val m = LinkedHashMap<String, Any?>()
                ws()
                if (s[i] == '}') { i++; return m }
                while (true) {
                    ws()
                    val k = string()
                    ws(); require(s[i++] == ':')
                    m[k] = value()
                    ws()
                    if (s[i++] == '}') return m
                }
                @Suppress("UNREACHABLE_CODE") m
            }
            '[' -> {
                i++
                val l = ArrayList<Any?>()
                ws()
                if (s[i] == ']') { i++; return l }
                while (true) {
                    l.add(value())
                    ws()
                    if (s[i++] == ']') return l
                }
                @Suppress("UNREACHABLE_CODE") l
            }
            '"' -> string()
            't' -> { i += 4; true }
            'f' -> { i += 5; false }
            'n' -> { i += 4; null }
            else -> {
                val start = i
                while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
                val t = s.substring(start, i)
                if (t.any { it in ".eE" }) t.toDouble() else t.toLong()
            }
        }
    }

    private fun string(): String {
        require(s[i++] == '"') { "string expected at $i" }
        val b = StringBuilder()
        while (true) {
            val c = s[i++]
            when (c) {
                '"' -> return b.toString()
                '\\' -> when (val e = s[i++]) {
                    'n' -> b.append('\n')
                    't' -> b.append('\t')
                    'r' -> b.append('\r')
                    'b' -> b.append('\b')
                    'f' -> b.append('\u000c')
                    'u' -> { b.append(s.substring(i, i + 4).toInt(16).toChar()); i += 4 }
                    else -> b.append(e)
                }
                else -> b.append(c)
            }
        }
    }
}

/** Just enough JSON for event properties: strings, numbers, booleans, null, maps and lists ([JsonWriter]). */
internal object Json {
    fun encode(value: Any?): String = JsonWriter().also { it.value(value) }.toString()
}
