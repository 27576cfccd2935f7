// The idiomatic `dev.trailmark.Trailmark` API, with the HttpURLConnection transport, against
// the real reference server.

import dev.trailmark.JsonReader
import dev.trailmark.Trailmark
import java.io.File
import java.nio.file.Files
import kotlin.test.Test
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import uniffi.trailmark_ffi.TrailmarkConfig

class TrailmarkApiTest {
    @Test
    fun trackThroughHttpUrlConnectionArrives() = runBlocking {
        val dir = Files.createTempDirectory("tm-kotlin-api").toFile()
        val bin = System.getProperty("trailmark.server") ?: error("set -Dtrailmark.server")
        val proc = ProcessBuilder(bin, "--app", "app:secret", "--admin-key", "adm1n-key-0123456789", "--db", File(dir, "server.db").path, "--listen", "127.0.0.1:0")
            .redirectError(ProcessBuilder.Redirect.DISCARD)
            .start()
        try {
            val base = proc.inputStream.bufferedReader().lineSequence().first { it.startsWith("listening ") }
                .removePrefix("listening ").trim()
            val config = TrailmarkConfig(
                appId = "app", appSecret = "secret", endpoint = base, dbPath = File(dir, "sdk.db").path,
                os = "Android", deviceId = "android-id-1", debug = true,
            )
            val lines = java.util.Collections.synchronizedList(mutableListOf<String>())
            Trailmark.start(config, logger = { lines.add(it) }).use { tm ->
                // No Play referrer on this device: the install request goes at once, and the real
                // attribution engine answers (organic: no click).
                tm.setInstallReferrer(null)
                val attribution = tm.attribution(timeoutMs = 20_000)
                assertEquals("organic", attribution?.matchType)
                assertEquals(false, attribution?.attributed)
                tm.identify("user-7", mapOf("email" to "Kim@Example.com", "plan" to "pro"))
                tm.track("add_to_cart", mapOf("sku" to "A \"1\"", "price" to 9.5, "currency" to "EUR", "tags" to listOf("x", 1, null)))
                // Invalid for the server (no currency): rejected alone, and stats() says why.
                tm.track("purchase", mapOf("revenue" to 10))
                tm.flush()
                var stats = tm.stats()
                val deadline = System.currentTimeMillis() + 20_000
                while (stats.queued > 0uL && System.currentTimeMillis() < deadline) {
                    Thread.sleep(20)
                    stats = tm.stats()
                }
                assertEquals(0uL, stats.queued, "$stats")
                assertTrue(stats.delivered >= 4uL, "install, session_start, identify, add_to_cart: $stats")
                assertEquals(1uL, stats.rejectedByServer, "$stats")
                assertEquals(200.toUShort(), stats.lastRejectionStatus, "rejected in a batch the server took: $stats")
                assertTrue("currency" in stats.lastRejectionReason, "the server's reason: $stats")
                assertEquals(0uL, stats.badAnswers, "$stats")
                // What arrived, read back through the server's event inspector.
                val anon = tm.anonymousId()
                val c = java.net.URL("$base/v1/events?anonymous_id=$anon").openConnection() as java.net.HttpURLConnection
                c.setRequestProperty("Authorization", "Bearer adm1n-key-0123456789")
                assertEquals(200, c.responseCode)
                val events = (JsonReader(c.inputStream.readBytes().toString(Charsets.UTF_8)).read() as Map<*, *>)["events"] as List<*>
                val byType = events.associateBy { (it as Map<*, *>)["type"] as String }
                assertEquals(setOf("install", "session_start", "identify", "add_to_cart"), byType.keys)
                val cart = byType["add_to_cart"] as Map<*, *>
                assertEquals(mapOf("sku" to "A \"1\"", "price" to 9.5, "currency" to "EUR", "tags" to listOf("x", 1L, null)), cart["properties"])
                assertEquals("user-7", cart["user_id"])
                val sdk = (cart["context"] as Map<*, *>)["sdk"] as Map<*, *>
                assertEquals("trailmark-kotlin", sdk["name"])
                val traits = (byType["identify"] as Map<*, *>)["properties"] as Map<*, *>
                assertEquals("pro", traits["plan"])
                assertEquals(Trailmark.hashEmail("kim@example.com"), traits["email_sha256"])
                assertTrue("email" !in traits, "the raw email never leaves the device")
                // debug = true: the core's decisions reached the logger.
                val log = synchronized(lines) { lines.toList() }
                assertTrue(log.any { it == "add_to_cart queued" }, "$log")
                assertTrue(log.any { it.startsWith("upload batch") }, "$log")
                assertTrue(log.any { "acknowledged" in it && "1 rejected" in it }, "$log")
            }
        } finally {
            proc.destroy()
            proc.waitFor()
            dir.deleteRecursively()
        }
    }
}
