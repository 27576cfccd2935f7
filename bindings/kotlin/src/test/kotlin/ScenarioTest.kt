// The shared scenarios (tests/scenarios/*.json, format in its README) through the idiomatic
// Kotlin API. The folder comes in the system property `trailmark.scenarios`.

import dev.trailmark.JsonReader
import dev.trailmark.Trailmark
import dev.trailmark.TrailmarkEvent
import java.io.File
import java.nio.file.Files
import kotlin.test.Test
import kotlin.test.assertTrue
import kotlin.test.fail
import kotlinx.coroutines.runBlocking
import uniffi.trailmark_ffi.HttpResponse
import uniffi.trailmark_ffi.HttpTransport
import uniffi.trailmark_ffi.SdkStats
import uniffi.trailmark_ffi.TrackingAuthorization
import uniffi.trailmark_ffi.TrailmarkConfig
import uniffi.trailmark_ffi.TrailmarkException

/** A middleware doing what an `add_middleware` step says (tests/scenarios/README.md). */
private fun scripted(rule: Map<String, Any?>, e: TrailmarkEvent): TrailmarkEvent? {
    if (rule["drop_type"] == e.type) return null
    if (rule["fail_type"] == e.type) throw IllegalStateException("scripted failure")
    val rename = obj(rule["rename"])
    val type = if (rename["from"] == e.type) rename["to"] as String else e.type
    val props = LinkedHashMap(e.properties)
    (rule["remove"] as? List<*>)?.forEach { props.remove(it as String) }
    obj(rule["set"]).forEach { (k, v) -> props[k] = v }
    obj(rule["copy_context"]).forEach { (k, from) -> props[k] = e.context[from as String] }
    return TrailmarkEvent(type, props, e.context)
}

/** `not_determined` → `NOT_DETERMINED` (the generated enum's names). */
private fun enumName(s: String) = s.uppercase()

private fun obj(v: Any?): Map<String, Any?> {
    @Suppress("UNCHECKED_CAST")
    return (v as? Map<String, Any?>) ?: emptyMap()
}

/** The server's answer when the script has none left: an organic attribution for the install
 *  request, every event of a batch accepted. */
fun defaultAnswer(url: String, body: ByteArray): Any =
    if (url.endsWith("/v1/install")) {
        mapOf(
            "attributed" to false, "match_type" to "organic", "confidence" to 0.0, "campaign_id" to null,
            "link_id" to null, "click_id" to null, "network" to null, "deep_link" to null,
            "fraud" to mapOf("flags" to emptyList<Any>(), "rejected" to false), "reinstall" to false,
        )
    } else {
        val batch = obj(JsonReader(String(body, Charsets.UTF_8)).read())["batch"] as List<*>
        mapOf("accepted" to batch.size, "duplicates" to 0, "rejected" to emptyList<Any>())
    }

/** Records every request and answers from the script, then as the server does when it takes
 *  everything. A string `body` is sent as it is (a proxy's page). */
class ScriptedTransport(responses: List<Any?>) : HttpTransport {
    private val script = ArrayDeque(responses)
    val captured = java.util.Collections.synchronizedList(ArrayList<Triple<String, Map<String, String>, ByteArray>>())

    override fun post(url: String, headers: Map<String, String>, body: ByteArray): HttpResponse {
        val scripted = synchronized(script) { script.removeFirstOrNull() }
        captured.add(Triple(url, headers, body))
        val next = if (scripted == null) mapOf("body" to defaultAnswer(url, body)) else obj(scripted)
        val answer = when (val b = next["body"]) {
            null -> ByteArray(0)
            is String -> b.toByteArray()
            else -> dev.trailmark.Json.encode(b).toByteArray()
        }
        return HttpResponse(((next["status"] as? Long) ?: 200L).toInt().toUShort(), next["retry_after"] as String?, answer, next["error"] as String?)
    }
}

class Matcher {
    private val vars = LinkedHashMap<String, Any?>()

    private val shapes = mapOf(
        "<any>" to Regex("(?s).*"),
        "<uuid>" to Regex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        "<timestamp>" to Regex("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z"),
        "<digits>" to Regex("\\d+"),
        "<signature>" to Regex("v1=[0-9a-fA-F]{64}"),
        "<traceparent>" to Regex("00-[0-9a-f]{32}-[0-9a-f]{16}-01"),
    )

    fun match(expected: Any?, actual: Any?, path: String) {
        fun bad(): Nothing = fail("$path: expected $expected, got $actual")
        when {
            expected is String && expected.startsWith("$") -> {
                if (vars.containsKey(expected)) {
                    if (vars[expected] != actual) fail("$path: $expected was ${vars[expected]}, now $actual")
                } else {
                    vars.entries.firstOrNull { it.value == actual }?.let { fail("$path: $expected would equal ${it.key}") }
                    vars[expected] = actual
                }
            }
            expected is String && expected.startsWith("<") && expected.endsWith(">") -> {
                val shape = shapes[expected] ?: fail("$path: unknown pattern $expected")
                if (actual !is String || !shape.matches(actual)) bad()
            }
            expected is Number -> if (actual !is Number || actual.toDouble() != expected.toDouble()) bad()
            expected is Map<*, *> -> {
                if (actual !is Map<*, *>) bad()
                if (expected.keys.map { it.toString() }.toSet() != actual.keys.map { it.toString() }.toSet()) {
                    fail("$path: keys ${expected.keys.sortedBy { it.toString() }} expected, got ${actual.keys.sortedBy { it.toString() }}")
                }
                expected.forEach { (k, v) -> match(v, actual[k], "$path.$k") }
            }
            expected is List<*> -> {
                if (actual !is List<*>) bad()
                if (expected.size != actual.size) fail("$path: ${expected.size} items expected, got ${actual.size}")
                expected.forEachIndexed { i, v -> match(v, actual[i], "$path[$i]") }
            }
            else -> if (expected != actual) bad()
        }
    }
}

fun expand(v: Any?, defs: Map<String, Any?>): Any? = when {
    v is String && v.startsWith("@") -> expand(defs[v.substring(1)] ?: error("undefined $v"), defs)
    v is Map<*, *> -> v.entries.associate { (k, x) -> k.toString() to expand(x, defs) }
    v is List<*> -> v.map { expand(it, defs) }
    else -> v
}

fun statsMap(s: SdkStats): Map<String, Any> = mapOf(
    "recorded" to s.recorded, "delivered" to s.delivered, "queued" to s.queued, "held" to s.held,
    "rejected_by_server" to s.rejectedByServer, "refused_invalid" to s.refusedInvalid,
    "dropped_queue_full" to s.droppedQueueFull, "dropped_expired" to s.droppedExpired,
    "dropped_consent_denied" to s.droppedConsentDenied, "dropped_opted_out" to s.droppedOptedOut,
    "dropped_backpressure" to s.droppedBackpressure, "uploads" to s.uploads,
    "upload_failures" to s.uploadFailures, "bad_answers" to s.badAnswers, "in_flight" to s.inFlight,
    "dropped_by_middleware" to s.droppedByMiddleware, "middleware_errors" to s.middlewareErrors,
).mapValues { it.value.toLong() } + mapOf(
    "last_rejection_status" to s.lastRejectionStatus.toLong(), "last_rejection_reason" to s.lastRejectionReason,
)

fun config(c: Map<String, Any?>, db: File) = TrailmarkConfig(
    appId = c["app_id"] as String? ?: "", appSecret = c["app_secret"] as String? ?: "",
    endpoint = c["endpoint"] as String? ?: "", dbPath = db.path,
    requireConsent = c["require_consent"] as Boolean? ?: false,
    deviceId = c["device_id"] as String?, advertisingId = c["advertising_id"] as String?, appVersion = c["app_version"] as String?, os = c["os"] as String?,
    osVersion = c["os_version"] as String?, model = c["model"] as String?, locale = c["locale"] as String?,
    timezone = c["timezone"] as String?, sdkName = c["sdk_name"] as String?, sdkVersion = c["sdk_version"] as String?,
    flushAt = (c["flush_at"] as Long?)?.toUInt(), flushIntervalMs = (c["flush_interval_ms"] as Long?)?.toULong(),
    maxQueueEvents = (c["max_queue_events"] as Long?)?.toUInt(),
    hashedTraits = (c["hashed_traits"] as List<*>?)?.map { it as String },
    trackingAuthorizationWaitMs = (c["tracking_authorization_wait_ms"] as Long?)?.toULong(),
    trackingAuthorization = (c["tracking_authorization"] as String?)?.let { TrackingAuthorization.valueOf(enumName(it)) },
)

fun runScenario(file: File) = runBlocking {
    val scenario = obj(JsonReader(file.readText()).read())
    val dir = Files.createTempDirectory("tm-scenario").toFile()
    val db = File(dir, "sdk.db")
    val cfg = obj(scenario["config"])
    @Suppress("UNCHECKED_CAST")
    val transport = ScriptedTransport((scenario["responses"] as List<Any?>?) ?: emptyList())
    var tm = Trailmark.start(config(cfg, db), transport)
    val matcher = Matcher()
    try {
        @Suppress("UNCHECKED_CAST")
        for ((i, step) in ((scenario["steps"] as List<Any?>).map { obj(it) }).withIndex()) {
            val at = "step $i $step"
            when (step["call"]) {
                "track" -> tm.track(step["type"] as String, obj(step["properties"]))
                "screen" -> tm.screen(step["name"] as String, obj(step["properties"]))
                "identify" -> tm.identify(step["user_id"] as String, obj(step["traits"]))
                "register" -> tm.register(obj(step["properties"]))
                "unregister" -> tm.unregister(step["key"] as String)
                "group" -> tm.group(step["group_id"] as String, obj(step["traits"]))
                "alias" -> tm.alias(step["user_id"] as String)
                "add_middleware" -> tm.addMiddleware { e -> scripted(step, e) }
                "set_advertising_id" -> tm.setAdvertisingId(step["id"] as String?)
                "set_tracking_authorization" -> tm.setTrackingAuthorization(
                    TrackingAuthorization.valueOf(enumName(step["status"] as String)),
                )
                "set_consent" -> tm.setConsent(step["analytics"] as Boolean?, step["attribution"] as Boolean?, step["do_not_sell"] as Boolean?)
                "opt_out" -> tm.optOut()
                "opt_in" -> tm.optIn()
                "reset" -> tm.reset()
                "on_foreground" -> tm.onForeground()
                "on_background" -> tm.onBackground()
                "handle_open_url" -> tm.handleOpenUrl(step["url"] as String)
                "flush" -> tm.flush()
                "restart" -> { tm.close(); tm = Trailmark.start(config(cfg, db), transport) }
                "wait_requests" -> {
                    val want = (step["count"] as Long).toInt()
                    val deadline = System.currentTimeMillis() + 20_000
                    while (!(transport.captured.size >= want && tm.stats().inFlight == 0uL)) {
                        if (System.currentTimeMillis() > deadline) fail("$at: ${transport.captured.size} requests after 20 s")
                        Thread.sleep(5)
                    }
                }
                "expect_stats" -> {
                    val actual = statsMap(tm.stats())
                    obj(step["stats"]).forEach { (k, v) ->
                        val a = actual[k] ?: fail("$at: unknown stat $k")
                        if (a != v) fail("$at: stat $k is $a, expected $v; all: $actual")
                    }
                }
                "anonymous_id" -> matcher.match(step["expect"], tm.anonymousId(), at)
                "attribution" -> {
                    val a = tm.attribution(timeoutMs = 0)
                    val got = a?.let {
                        mapOf(
                            "attributed" to it.attributed, "match_type" to it.matchType, "confidence" to it.confidence,
                            "campaign_id" to it.campaignId, "link_id" to it.linkId, "click_id" to it.clickId,
                            "network" to it.network, "deep_link_path" to it.deepLinkPath,
                            "deep_link_params" to it.deepLinkParams, "fraud_flags" to it.fraudFlags,
                            "fraud_rejected" to it.fraudRejected, "reinstall" to it.reinstall, "reason" to it.reason,
                        )
                    }
                    matcher.match(step["expect"], got, at)
                }
                "hash_email" -> {
                    val result = runCatching { Trailmark.hashEmail(step["email"] as String) }
                    val expect = step["expect"]
                    if (expect != null) {
                        if (result.getOrNull() != expect) fail("$at: got $result")
                    } else {
                        val e = result.exceptionOrNull()
                        if (e !is TrailmarkException || e::class.simpleName != step["error"]) fail("$at: got $result")
                    }
                }
                "start_error" -> {
                    val changed = cfg + obj(step["config"])
                    try {
                        Trailmark.start(config(changed, File(dir, "other-$i.db")), null).close()
                        fail("$at: started")
                    } catch (e: TrailmarkException) {
                        if (e::class.simpleName != step["error"]) fail("$at: wrong error $e")
                    }
                }
                else -> fail("$at: unknown call")
            }
        }
    } finally {
        tm.close()
        dir.deleteRecursively()
    }
    val actual = transport.captured.map { (url, headers, body) ->
        mapOf(
            "path" to url.substringAfter("://").let { "/" + it.substringAfter('/', "") },
            "headers" to headers.mapKeys { it.key.lowercase() },
            "body" to JsonReader(String(body, Charsets.UTF_8)).read(),
        )
    }
    matcher.match(expand(scenario["requests"], obj(scenario["defs"])), actual, "requests")
}

class ScenarioTest {
    @Test
    fun sharedScenarios() {
        val dir = File(System.getProperty("trailmark.scenarios") ?: error("set -Dtrailmark.scenarios"))
        val files = dir.listFiles { f -> f.name.endsWith(".json") }!!.sortedBy { it.name }
        assertTrue(files.isNotEmpty(), "no scenarios in $dir")
        val failures = files.mapNotNull { f ->
            try {
                runScenario(f)
                println("scenario ${f.name} ok")
                null
            } catch (e: Throwable) {
                "${f.name}: ${e.message}"
            }
        }
        assertTrue(failures.isEmpty(), "${failures.size} of ${files.size} scenarios failed:\n" + failures.joinToString("\n"))
    }
}
