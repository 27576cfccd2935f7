// The JNI fast path of the recording calls (track, screen, identify): one crossing into Rust
// with the name and the JSON properties in one byte array, instead of UniFFI's JNA structures
// (ffi/src/fast.rs has the Rust side and the safety argument). Everything else goes through
// the UniFFI bindings, and so do these calls whenever the fast path is not there.
package dev.trailmark

import uniffi.trailmark_ffi.TrailmarkSdk

/**
 * The Rust library's JNI entry points. Loaded once per process; when that fails (a build
 * without the `jni` feature, another library version, `-Dtrailmark.fastpath=false`),
 * [available] is false and the SDK uses the UniFFI calls.
 */
internal object FastPath {
    /** The kinds of call (ffi/src/fast.rs). */
    const val TRACK = 0
    const val SCREEN = 1
    const val IDENTIFY = 2

    /** Answers of [record]. */
    const val HANDED_OVER = 0
    const val UNKNOWN_SDK = 1
    const val REFUSED = 2
    const val PANICKED = 3

    /** The entry points this code was written for (ffi/src/fast.rs `VERSION`). */
    private const val VERSION = 1

    @JvmStatic external fun version(): Int

    /** `buf[0, nameLen)` is the name in UTF-8, `buf[nameLen, len)` the properties' JSON. */
    @JvmStatic external fun record(id: Long, kind: Int, buf: ByteArray?, nameLen: Int, len: Int): Int

    @JvmStatic external fun release(id: Long)

    @JvmStatic external fun isLive(id: Long): Boolean

    val available: Boolean = load()

    private fun load(): Boolean {
        if (System.getProperty("trailmark.fastpath") == "false") return false
        return try {
            loadLibrary()
            version() == VERSION
        } catch (e: Throwable) { // UnsatisfiedLinkError, SecurityException, ...
            false
        }
    }

    /**
     * Loads the library for JNI. On the JVM, the very file JNA (so UniFFI) loaded, found by
     * the same name; on Android, by name from the APK, as JNA does there. If a different copy
     * were loaded anyway, [register] notices (the id would be unknown to it).
     */
    private fun loadLibrary() {
        val name = System.getProperty("uniffi.component.trailmark_ffi.libraryOverride") ?: "trailmark_ffi"
        val android = System.getProperty("java.vm.name")?.contains("Dalvik", ignoreCase = true) == true
        val file = if (android) null else runCatching { com.sun.jna.NativeLibrary.getInstance(name).file }.getOrNull()
        if (file != null && file.isFile) System.load(file.absolutePath) else System.loadLibrary(name)
    }

    /** An id for [sdk] on the fast path, or 0 (use UniFFI) when there is none. */
    fun register(sdk: TrailmarkSdk): Long {
        if (!available) return 0
        return try {
            val id = sdk.fastPathId().toLong()
            if (isLive(id)) id else 0
        } catch (e: Throwable) {
            0
        }
    }
}

/**
 * JSON written straight to UTF-8 bytes: strings, numbers, booleans, null, maps and iterables;
 * anything else as its `toString()`, non-finite numbers as null. A lone UTF-16 surrogate (say,
 * a string cut in the middle of an emoji) becomes U+FFFD instead of failing the call.
 */
internal class JsonWriter(capacity: Int = 256) {
    var bytes = ByteArray(capacity)
        private set
    var size = 0
        private set

    private fun room(n: Int) {
        if (size + n > bytes.size) bytes = bytes.copyOf(maxOf(bytes.size * 2, size + n))
    }

    private fun ascii(s: String) {
        room(s.length)
        for (ch in s) bytes[size++] = ch.code.toByte()
    }

    /** The text of [s] in UTF-8, without quotes or escapes (the event name). */
    fun text(s: String) = utf8(s, escape = false)

    fun value(v: Any?) {
        when (v) {
            null -> ascii("null")
            is String -> string(v)
            is Boolean -> ascii(if (v) "true" else "false")
            is Int, is Long, is Short, is Byte -> ascii(v.toString())
            is Double -> ascii(if (v.isFinite()) v.toString() else "null")
            is Float -> ascii(if (v.isFinite()) v.toString() else "null")
            is Number -> ascii(v.toString())
            is Map<*, *> -> {
                room(1)
                bytes[size++] = '{'.code.toByte()
                var first = true
                for ((k, x) in v) {
                    if (!first) { room(1); bytes[size++] = ','.code.toByte() }
                    first = false
                    string(k.toString())
                    room(1)
                    bytes[size++] = ':'.code.toByte()
                    value(x)
                }
                room(1)
                bytes[size++] = '}'.code.toByte()
            }
            is Iterable<*> -> {
                room(1)
                bytes[size++] = '['.code.toByte()
                var first = true
                for (x in v) {
                    if (!first) { room(1); bytes[size++] = ','.code.toByte() }
                    first = false
                    value(x)
                }
                room(1)
                bytes[size++] = ']'.code.toByte()
            }
            else -> string(v.toString())
        }
    }

    private fun string(s: String) {
        room(1)
        bytes[size++] = '"'.code.toByte()
        utf8(s, escape = true)
        room(1)
        bytes[size++] = '"'.code.toByte()
    }

    private fun utf8(s: String, escape: Boolean) {
        room(s.length * 6) // the most one UTF-16 unit takes: \u00XX
        val b = bytes
        var n = size
        var i = 0
        val len = s.length
        while (i < len) {
            val c = s[i].code
            when {
                c < 0x80 -> if (escape && (c < 0x20 || c == '"'.code || c == '\\'.code)) {
                    b[n++] = '\\'.code.toByte()
                    when (c) {
                        '"'.code, '\\'.code -> b[n++] = c.toByte()
                        else -> {
                            b[n++] = 'u'.code.toByte()
                            b[n++] = '0'.code.toByte()
                            b[n++] = '0'.code.toByte()
                            b[n++] = HEX[c shr 4]
                            b[n++] = HEX[c and 0xF]
                        }
                    }
                } else {
                    b[n++] = c.toByte()
                }
                c < 0x800 -> {
                    b[n++] = (0xC0 or (c shr 6)).toByte()
                    b[n++] = (0x80 or (c and 0x3F)).toByte()
                }
                c in 0xD800..0xDBFF && i + 1 < len && s[i + 1].code in 0xDC00..0xDFFF -> {
                    val cp = 0x10000 + ((c - 0xD800) shl 10) + (s[i + 1].code - 0xDC00)
                    i++
                    b[n++] = (0xF0 or (cp shr 18)).toByte()
                    b[n++] = (0x80 or ((cp shr 12) and 0x3F)).toByte()
                    b[n++] = (0x80 or ((cp shr 6) and 0x3F)).toByte()
                    b[n++] = (0x80 or (cp and 0x3F)).toByte()
                }
                else -> {
                    val cp = if (c in 0xD800..0xDFFF) 0xFFFD else c // a lone surrogate
                    b[n++] = (0xE0 or (cp shr 12)).toByte()
                    b[n++] = (0x80 or ((cp shr 6) and 0x3F)).toByte()
                    b[n++] = (0x80 or (cp and 0x3F)).toByte()
                }
            }
            i++
        }
        size = n
    }

    override fun toString(): String = String(bytes, 0, size, Charsets.UTF_8)

    private companion object {
        val HEX = "0123456789abcdef".toByteArray()
    }
}
