// AAR: the Kotlin API (src/main), the Android glue (src/android), the UniFFI bindings generated
// from the Rust library, JNA, and libtrailmark_ffi.so for each ABI built with cargo-ndk.
//
//   cargo install cargo-ndk && rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android
//   ANDROID_NDK_HOME=... ./gradlew :assembleRelease      # -> build/outputs/aar/
plugins {
    id("com.android.library") version "8.7.3"
    id("org.jetbrains.kotlin.android") version "2.1.0"
}

val repoRoot = rootDir.resolve("../..")
val jniOut = layout.buildDirectory.dir("jniLibs")
val generated = layout.buildDirectory.dir("generated/uniffi")

android {
    namespace = "dev.trailmark"
    compileSdk = 35
    defaultConfig {
        minSdk = 21
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].apply {
        java.srcDirs("src/main/kotlin", "src/android/kotlin", generated)
        jniLibs.srcDirs(jniOut)
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation("net.java.dev.jna:jna:5.15.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
    implementation("androidx.lifecycle:lifecycle-process:2.8.7")
    implementation("com.android.installreferrer:installreferrer:2.2")
}

// The Rust library for every ABI (release profile, stripped by the NDK toolchain): without the
// built-in HTTP client (the Kotlin API passes HttpURLConnection), with the JNI fast path of
// track/screen/identify (src/main/kotlin/dev/trailmark/FastPath.kt).
val cargoNdk by tasks.registering(Exec::class) {
    workingDir = repoRoot
    commandLine(
        "cargo", "ndk", "-t", "arm64-v8a", "-t", "armeabi-v7a", "-t", "x86_64",
        "-o", jniOut.get().asFile.path, "build", "--release", "-p", "trailmark-ffi",
        "--no-default-features", "--features", "jni",
    )
}

// Kotlin bindings from the host build of the same library (the interface is identical).
val uniffiBindings by tasks.registering(Exec::class) {
    workingDir = repoRoot
    commandLine(
        "sh", "-c",
        "cargo build --release -p trailmark-ffi --features trailmark-ffi/cli --bin uniffi-bindgen --lib && " +
            "target/release/uniffi-bindgen generate --library target/release/libtrailmark_ffi.so " +
            "--language kotlin --out-dir ${generated.get().asFile.path}",
    )
}

tasks.named("preBuild") { dependsOn(cargoNdk, uniffiBindings) }
