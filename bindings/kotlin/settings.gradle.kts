// The Trailmark Android library (AAR). Documented, not run in this repository's CI: there is no
// Android SDK on the test machines. ./tests/run.sh kotlin compiles and tests the same Kotlin
// sources (minus src/android) on the JVM against the host-built library.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "trailmark-android"
