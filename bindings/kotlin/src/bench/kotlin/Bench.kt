// SDK start time and `track` latency through the Kotlin API (map → JSON bytes → JNI → Rust, and
// the UniFFI/JNA fallback).
// Run by `./tests/run.sh kotlin-bench` against the release library; figures in
// docs/BENCHMARKS.md.

import dev.trailmark.Trailmark
import java.io.File
import java.nio.file.Files
import uniffi.trailmark_ffi.HttpResponse
import uniffi.trailmark_ffi.HttpTransport
import uniffi.trailmark_ffi.TrailmarkConfig

/** Answers every upload at once as the server does when it takes everything (an organic
 *  attribution for the install request), so the benchmark measures the SDK, not a network. */
object Accept : HttpTransport {
    private val organic = """{"attributed":false,"match_type":"organic","confidence":0.0,"fraud":{"flags":[],"rejected":false},"reinstall":false}"""
    // One `"event_id":` per event: the bench's properties have no such key.
    private val eventId = Regex("\"event_id\":")

    override fun post(url: String, headers: Map<String, String>, body: ByteArray): HttpResponse {
        val answer = if (url.endsWith("/v1/install")) organic
        else """{"accepted":${eventId.findAll(String(body, Charsets.UTF_8)).count()},"duplicates":0,"rejected":[]}"""
        return HttpResponse(200u, null, answer.toByteArray(), null)
    }
}

fun report(what: String, samples: LongArray) {
    samples.sort()
    fun p(q: Double) = samples[((samples.size - 1) * q).toInt()] / 1000.0
    println(String.format("%-44s n=%-7d p50 %8.2f µs  p90 %8.2f µs  p99 %8.2f µs", what, samples.size, p(0.5), p(0.9), p(0.99)))
}

/** 20 rounds of 10,000 timed calls; each round ends with an untimed flush, so the worker's
 *  channel never fills. */
fun timeRounds(call: () -> Unit, flush: () -> Unit): LongArray {
    val samples = LongArray(200_000)
    for (round in 0 until 20) {
        for (i in 0 until 10_000) {
            val t = System.nanoTime()
            call()
            samples[round * 10_000 + i] = System.nanoTime() - t
        }
        flush()
    }
    return samples
}

fun main() {
    val dir = Files.createTempDirectory("tm-bench").toFile()
    fun config(name: String) = TrailmarkConfig(
        appId = "bench", appSecret = "secret", endpoint = "https://collect.example.test",
        dbPath = File(dir, name).path, deviceId = "android-id-1", os = "Android", osVersion = "14",
    )
    val t0 = System.nanoTime()
    Trailmark.start(config("cold.db"), Accept).close()
    println(String.format("%-44s %.2f ms", "start: first in the process (loads the .so)", (System.nanoTime() - t0) / 1e6))
    val starts = LongArray(200) { i ->
        val t = System.nanoTime()
        val tm = Trailmark.start(config("fresh-$i.db"), Accept)
        val elapsed = System.nanoTime() - t
        tm.close()
        elapsed
    }
    report("start: first launch (new queue)", starts)

    val tm = Trailmark.start(config("track.db"), Accept)
    check(tm.usesFastPath) { "the JNI fast path did not load" }
    val props = mapOf("sku" to "A-1", "price" to 9.99, "currency" to "EUR", "quantity" to 2)
    repeat(50_000) { tm.track("add_to_cart", props) } // JIT warm-up
    kotlinx.coroutines.runBlocking { tm.flush() }
    val samples = timeRounds({ tm.track("add_to_cart", props) }, { kotlinx.coroutines.runBlocking { tm.flush() } })
    check(tm.stats().droppedBackpressure == 0uL) { "${tm.stats()}" }
    report("track (Kotlin API, 4 properties)", samples)
    val screens = timeRounds({ tm.screen("Checkout", props) }, { kotlinx.coroutines.runBlocking { tm.flush() } })
    report("screen (Kotlin API, 4 properties)", screens)
    check(tm.stats().refusedInvalid == 0uL) { "${tm.stats()}" }

    // Where the time goes: the JSON encoding alone, and the JNI fast path with the bytes given.
    val encode = LongArray(200_000)
    var sink = 0
    for (i in encode.indices) {
        val t = System.nanoTime()
        val w = dev.trailmark.JsonWriter()
        w.text("add_to_cart")
        w.value(props)
        sink += w.size
        encode[i] = System.nanoTime() - t
    }
    report("  of which: JsonWriter (name + map -> UTF-8)", encode)
    val w = dev.trailmark.JsonWriter().apply { text("add_to_cart") }
    val nameLen = w.size
    w.value(props)
    val id = tm.fastPathId
    val jni = timeRounds({ dev.trailmark.FastPath.record(id, dev.trailmark.FastPath.TRACK, w.bytes, nameLen, w.size) },
        { kotlinx.coroutines.runBlocking { tm.flush() } })
    report("  of which: JNI fast path (bytes given)", jni)

    // The same API on the UniFFI calls (the fallback), and the generated binding alone.
    tm.disableFastPath()
    repeat(50_000) { tm.track("add_to_cart", props) }
    kotlinx.coroutines.runBlocking { tm.flush() }
    val fallback = timeRounds({ tm.track("add_to_cart", props) }, { kotlinx.coroutines.runBlocking { tm.flush() } })
    report("track (Kotlin API, UniFFI fallback)", fallback)
    check(tm.stats().droppedBackpressure == 0uL) { "${tm.stats()}" }
    tm.close()

    val raw = uniffi.trailmark_ffi.TrailmarkSdk.start(config("raw.db"), Accept)
    val json = dev.trailmark.Json.encode(props)
    repeat(50_000) { raw.track("add_to_cart", json) }
    raw.flush()
    val ffi = timeRounds({ raw.track("add_to_cart", json) }, { raw.flush() })
    report("  of which: generated binding (JSON given)", ffi)
    raw.destroy()
    check(sink > 0)
}
