// JUnit 4 tests of the generated Kotlin bindings against the host-built library and the real
// reference server. Run by `./tests/run.sh kotlin`, which passes the server binary in the
// system property `trailmark.server` and the library folder in `jna.library.path`.

import java.io.File
import java.nio.file.Files
import kotlin.test.AfterTest
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import uniffi.trailmark_ffi.Consent
import uniffi.trailmark_ffi.TrailmarkConfig
import uniffi.trailmark_ffi.TrailmarkException
import uniffi.trailmark_ffi.TrailmarkSdk
import uniffi.trailmark_ffi.hashEmail

class TrailmarkFfiTest {
    private val dir: File = Files.createTempDirectory("tm-kotlin").toFile()

    @AfterTest
    fun removeDir() {
        dir.deleteRecursively()
    }

    /** Starts the reference server on a free port; returns its base URL and the process. */
    private fun server(): Pair<String, Process> {
        val bin = System.getProperty("trailmark.server") ?: error("set -Dtrailmark.server")
        val p = ProcessBuilder(bin, "--app", "app:secret", "--db", File(dir, "server.db").path, "--listen", "127.0.0.1:0")
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .start()
        val line = p.inputStream.bufferedReader().lineSequence().first { it.startsWith("listening ") }
        return Pair(line.removePrefix("listening ").trim(), p)
    }

    private fun config(endpoint: String, requireConsent: Boolean = false) = TrailmarkConfig(
        appId = "app", appSecret = "secret", endpoint = endpoint, dbPath = File(dir, "sdk.db").path,
        requireConsent = requireConsent, sdkName = "trailmark-kotlin", sdkVersion = "0.1.0",
    )

    private fun waitDelivered(sdk: TrailmarkSdk, n: ULong): ULong {
        val deadline = System.currentTimeMillis() + 20_000
        while (System.currentTimeMillis() < deadline) {
            val s = sdk.stats()
            if (s.delivered >= n) return s.delivered
            Thread.sleep(20)
        }
        return sdk.stats().delivered
    }

    @Test
    fun tracksAndDeliversToTheServer() {
        val (base, proc) = server()
        try {
            val sdk = TrailmarkSdk.start(config(base), null)
            sdk.track("add_to_cart", """{"sku": "A-1", "price": 9.5, "currency": "EUR"}""")
            sdk.track("Not A Type", "{}") // refused and counted, never thrown
            sdk.flush()
            val delivered = waitDelivered(sdk, 3u) // install, session_start, add_to_cart
            assertTrue(delivered >= 3u, "delivered $delivered")
            assertEquals(1uL, sdk.stats().refusedInvalid)
        } finally {
            proc.destroy()
        }
    }

    @Test
    fun consentHoldsEventsAndPersistsAcrossRecreation() {
        val sdk = TrailmarkSdk.start(config("http://127.0.0.1:9", requireConsent = true), null)
        sdk.track("screen_view", """{"name": "home"}""")
        sdk.flush()
        val anon = sdk.anonymousId()
        assertTrue(sdk.stats().held >= 1uL)
        sdk.destroy()
        val again = TrailmarkSdk.start(config("http://127.0.0.1:9", requireConsent = true), null)
        assertEquals(anon, again.anonymousId(), "the anonymous id survives re-creating the client")
        assertTrue(again.stats().held >= 1uL, "held events survive too")
        again.setConsent(Consent(analytics = false, attribution = false, doNotSell = true))
        again.flush()
        assertEquals(0uL, again.stats().held, "denied consent drops what was held")
        again.destroy()
    }

    @Test
    fun piiIsHashedLikeTheCore() {
        assertEquals(
            "8c87b489ce35cf2e2f39f80e282cb2e804932a56a213983eeeb428407d43b52d",
            hashEmail(" Jane@Example.com "),
        )
    }

    @Test
    fun errorsAreTypedExceptions() {
        assertFailsWith<TrailmarkException.InvalidInput> { hashEmail("not an email") }
        assertFailsWith<TrailmarkException.InvalidConfig> { TrailmarkSdk.start(config("not a url"), null) }
    }
}
