// The JNI fast path of track/screen/identify (dev.trailmark.FastPath, ffi/src/fast.rs): what it
// records arrives exactly as through UniFFI; misuse is counted or ignored, never thrown; a
// closed, released or collected SDK is unreachable, without a crash.

import dev.trailmark.FastPath
import dev.trailmark.Json
import dev.trailmark.JsonReader
import dev.trailmark.Trailmark
import java.io.File
import java.nio.file.Files
import java.util.concurrent.atomic.AtomicReference
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertNotEquals
import kotlin.test.assertTrue
import kotlin.test.fail
import kotlinx.coroutines.runBlocking
import uniffi.trailmark_ffi.TrailmarkConfig
import uniffi.trailmark_ffi.TrailmarkSdk

class FastPathTest {
    private val dir: File = Files.createTempDirectory("tm-fast").toFile()

    @AfterTest
    fun removeDir() {
        dir.deleteRecursively()
    }

    private fun config(name: String) = TrailmarkConfig(
        appId = "app", appSecret = "secret", endpoint = "https://collect.example.test",
        dbPath = File(dir, name).path, deviceId = "android-id-1", os = "Android",
    )

    private val organic = mapOf(
        "status" to 200L,
        "body" to mapOf(
            "attributed" to false, "match_type" to "organic", "confidence" to 0.0,
            "fraud" to mapOf("flags" to emptyList<Any>(), "rejected" to false), "reinstall" to false,
        ),
    )

    /** Every event uploaded so far, by the transport's record of the request bodies. */
    private fun uploaded(t: ScriptedTransport): List<Map<*, *>> =
        t.captured.filter { it.first.endsWith("/v1/event") }.flatMap { (_, _, body) ->
            ((JsonReader(String(body, Charsets.UTF_8)).read() as Map<*, *>)["batch"] as List<*>).map { it as Map<*, *> }
        }

    private fun waitFor(t: ScriptedTransport, tm: Trailmark, types: Set<String>): List<Map<*, *>> {
        val deadline = System.currentTimeMillis() + 20_000
        while (System.currentTimeMillis() < deadline) {
            runBlocking { tm.flush() }
            val events = uploaded(t)
            if (events.map { it["type"] }.containsAll(types) && tm.stats().inFlight == 0uL) return events
            Thread.sleep(20)
        }
        fail("no upload of $types; captured ${t.captured.map { it.first }}")
    }

    // Every kind of value the encoder handles, with the strings JSON must escape.
    private val tricky: Map<String, Any?> = linkedMapOf(
        "sku" to "A \"1\" \\ /", "price" to 9.5, "quantity" to 2, "big" to Long.MAX_VALUE, "small" to (-3).toShort(),
        "ratio" to 0.25f, "gift" to false, "none" to null, "nan" to Double.NaN, "inf" to Float.NEGATIVE_INFINITY,
        "tags" to listOf("x", 1, null, listOf(true)), "meta" to mapOf("color" to "blue", 7 to "seven"),
        "control" to "tab\tnewline\nbell\u0007nul\u0000", "unicode" to "é € 😀 \u2028",
        "cut" to "x\uD83D", "lone_low" to "\uDE00y", "other" to StringBuilder("built"),
        "set" to linkedSetOf("a", "b"),
    )

    private val trickyParsed: Map<String, Any?> = mapOf(
        "sku" to "A \"1\" \\ /", "price" to 9.5, "quantity" to 2L, "big" to Long.MAX_VALUE, "small" to -3L,
        "ratio" to 0.25, "gift" to false, "none" to null, "nan" to null, "inf" to null,
        "tags" to listOf("x", 1L, null, listOf(true)), "meta" to mapOf("color" to "blue", "7" to "seven"),
        "control" to "tab\tnewline\nbell\u0007nul\u0000", "unicode" to "é € 😀 \u2028",
        "cut" to "x\uFFFD", "lone_low" to "\uFFFDy", "other" to "built", "set" to listOf("a", "b"),
    )

    @Test
    fun encoderMatchesWhatItMeans() {
        assertEquals(trickyParsed, JsonReader(Json.encode(tricky)).read())
        assertEquals("{}", Json.encode(emptyMap<String, Any>()))
        assertEquals("\"\\u0001\\\"\"", Json.encode("\u0001\""))
    }

    @Test
    fun recordingCallsArriveThroughTheFastPath() {
        val t = ScriptedTransport(listOf(organic))
        Trailmark.start(config("sdk.db"), t).use { tm ->
            assertTrue(FastPath.available, "the JNI fast path loads on this JVM")
            assertTrue(tm.usesFastPath)
            tm.track("add_to_cart", tricky)
            tm.screen("Checkout", mapOf("step" to 2))
            tm.identify("user-7", mapOf("email" to "Kim@Example.com", "plan" to "pro"))
            tm.track("Not A Type") // refused and counted, never thrown
            tm.track("purchase")
            val events = waitFor(t, tm, setOf("add_to_cart", "screen_view", "identify", "purchase"))
            val byType = events.associateBy { it["type"] }
            assertEquals(trickyParsed, byType["add_to_cart"]!!["properties"])
            assertEquals(mapOf("name" to "Checkout", "step" to 2L), byType["screen_view"]!!["properties"])
            assertEquals("user-7", byType["purchase"]!!["user_id"])
            val traits = byType["identify"]!!["properties"] as Map<*, *>
            assertEquals("pro", traits["plan"])
            assertEquals(Trailmark.hashEmail("kim@example.com"), traits["email_sha256"])
            assertEquals(emptyMap<Any, Any>(), byType["purchase"]!!["properties"])
            assertEquals(1uL, tm.stats().refusedInvalid)
        }
    }

    @Test
    fun bothPathsRecordTheSame() {
        val t = ScriptedTransport(listOf(organic))
        Trailmark.start(config("sdk.db"), t).use { tm ->
            assertTrue(tm.usesFastPath)
            tm.track("fast_path", tricky)
            tm.track("Not A Type", tricky)
            tm.disableFastPath()
            assertTrue(!tm.usesFastPath)
            tm.track("uniffi_path", tricky)
            tm.track("Not A Type", tricky)
            val events = waitFor(t, tm, setOf("fast_path", "uniffi_path")).associateBy { it["type"] }
            assertEquals(events["fast_path"]!!["properties"], events["uniffi_path"]!!["properties"])
            assertEquals(2uL, tm.stats().refusedInvalid)
        }
    }

    @Test
    fun misuseIsCountedNeverThrown() {
        val sdk = TrailmarkSdk.start(config("raw.db"), ScriptedTransport(listOf(organic)))
        try {
            val id = FastPath.register(sdk)
            assertNotEquals(0L, id)
            val good = "add_to_cart{\"sku\":\"A-1\"}".toByteArray()
            fun rec(kind: Int, buf: ByteArray?, nameLen: Int, len: Int) = FastPath.record(id, kind, buf, nameLen, len)
            sdk.flush()
            val before = sdk.stats()
            assertEquals(FastPath.HANDED_OVER, rec(FastPath.TRACK, good, 11, good.size))
            // Unusable arguments: refused and counted by the SDK.
            val refused = listOf(
                rec(FastPath.TRACK, null, 0, 0),
                rec(FastPath.TRACK, good, -1, good.size),
                rec(FastPath.TRACK, good, 12, 11),
                rec(FastPath.TRACK, good, 11, good.size + 1),
                rec(FastPath.TRACK, good, Int.MAX_VALUE, Int.MAX_VALUE),
                rec(FastPath.TRACK, byteArrayOf(0x61, 0xFF.toByte(), 0x7B, 0x7D), 2, 4), // invalid UTF-8 name
                rec(FastPath.TRACK, byteArrayOf(0x61, 0x22, 0xC3.toByte(), 0x22), 1, 4), // invalid UTF-8 JSON
                rec(42, good, 11, good.size), // no such call
            )
            assertEquals(List(refused.size) { FastPath.REFUSED }, refused)
            // Valid bytes the core refuses: not an object, too long a name, an empty name.
            val notObject = "add_to_cart[1]".toByteArray()
            assertEquals(FastPath.HANDED_OVER, rec(FastPath.TRACK, notObject, 11, notObject.size))
            assertEquals(FastPath.HANDED_OVER, rec(FastPath.SCREEN, ByteArray(0), 0, 0))
            // Unknown ids reach nothing and count nothing.
            for (bogus in listOf(0L, -1L, Long.MAX_VALUE, Long.MIN_VALUE, id + 1_000_000)) {
                assertEquals(FastPath.UNKNOWN_SDK, FastPath.record(bogus, FastPath.TRACK, good, 11, good.size))
                FastPath.release(bogus)
            }
            sdk.flush()
            val after = sdk.stats()
            assertEquals(refused.size.toULong() + 2uL, after.refusedInvalid - before.refusedInvalid, "$after")
            assertEquals(1uL, after.recorded - before.recorded, "$after")
            // Released: unreachable, twice is harmless.
            FastPath.release(id)
            FastPath.release(id)
            assertEquals(FastPath.UNKNOWN_SDK, rec(FastPath.TRACK, good, 11, good.size))
            assertTrue(!FastPath.isLive(id))
            // Destroyed while registered: the registry holds it weakly, so it is gone.
            val other = FastPath.register(sdk)
            assertTrue(FastPath.isLive(other))
            sdk.destroy()
            assertEquals(FastPath.UNKNOWN_SDK, FastPath.record(other, FastPath.TRACK, good, 11, good.size))
            assertTrue(!FastPath.isLive(other))
        } finally {
            sdk.destroy()
        }
    }

    @Test
    fun closedSdkDoesNothing() {
        val tm = Trailmark.start(config("sdk.db"), ScriptedTransport(listOf(organic)))
        val id = tm.fastPathId
        assertNotEquals(0L, id)
        tm.close()
        tm.track("add_to_cart", mapOf("sku" to "A-1"))
        tm.screen("Home")
        tm.identify("user-1")
        tm.close()
        val good = "add_to_cart{}".toByteArray()
        assertEquals(FastPath.UNKNOWN_SDK, FastPath.record(id, FastPath.TRACK, good, 11, good.size))
    }

    @Test
    fun collectedSdkIsUnreachable() {
        var sdk: TrailmarkSdk? = TrailmarkSdk.start(config("gc.db"), ScriptedTransport(listOf(organic)))
        val id = FastPath.register(sdk!!)
        assertTrue(FastPath.isLive(id))
        @Suppress("UNUSED_VALUE")
        sdk = null // never destroyed: UniFFI's cleaner frees it once the JVM collects it
        val deadline = System.currentTimeMillis() + 20_000
        while (FastPath.isLive(id) && System.currentTimeMillis() < deadline) {
            System.gc()
            Thread.sleep(20)
        }
        assertTrue(!FastPath.isLive(id), "the collected SDK is still reachable")
        val good = "add_to_cart{}".toByteArray()
        assertEquals(FastPath.UNKNOWN_SDK, FastPath.record(id, FastPath.TRACK, good, 11, good.size))
    }

    @Test
    fun closeWhileOtherThreadsTrack() {
        val tm = Trailmark.start(config("sdk.db"), ScriptedTransport(listOf(organic)))
        val failure = AtomicReference<Throwable?>(null)
        val threads = List(4) { n ->
            Thread {
                try {
                    repeat(20_000) { i -> tm.track("add_to_cart", mapOf("thread" to n, "i" to i)) }
                } catch (e: Throwable) {
                    failure.compareAndSet(null, e)
                }
            }.also { it.start() }
        }
        Thread.sleep(30)
        tm.close()
        threads.forEach { it.join() }
        failure.get()?.let { throw AssertionError("a track threw after close", it) }
    }
}
