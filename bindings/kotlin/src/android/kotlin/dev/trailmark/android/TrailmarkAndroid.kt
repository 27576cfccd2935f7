// Android-only glue: the configuration read from the platform, the app lifecycle from
// ProcessLifecycleOwner, and the Play Install Referrer for install attribution. Everything
// else is the plain Kotlin API (src/main), which the JVM tests exercise.
package dev.trailmark.android

import android.annotation.SuppressLint
import android.content.Context
import android.os.Build
import android.provider.Settings
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import com.android.installreferrer.api.InstallReferrerClient
import com.android.installreferrer.api.InstallReferrerStateListener
import dev.trailmark.Trailmark
import java.io.File
import java.util.Locale
import java.util.TimeZone
import uniffi.trailmark_ffi.TrailmarkConfig

object TrailmarkAndroid {
    /**
     * Starts the SDK for this app. Call once, on the main thread (Application.onCreate), in
     * the app's main process only: the queue file is locked while an SDK has it open, so a
     * start in a second process of the app fails (a `TrailmarkError`) instead of writing over
     * the first one's queue (ADR 0022).
     * [configure] may change the config (consent, `lifecycleEvents = false`, ...). The GAID is
     * fetched here (off the main thread, honouring limit ad tracking); [autoScreenViews] sends a
     * `screen_view` for every resumed Activity.
     */
    @SuppressLint("HardwareIds")
    @JvmStatic
    @JvmOverloads
    fun start(
        context: Context,
        appId: String,
        appSecret: String,
        endpoint: String,
        configure: (TrailmarkConfig) -> TrailmarkConfig = { it },
        autoScreenViews: Boolean = false,
    ): Trailmark {
        val app = context.applicationContext
        val info = runCatching { app.packageManager.getPackageInfo(app.packageName, 0) }.getOrNull()
        val build = info?.let { if (Build.VERSION.SDK_INT >= 28) it.longVersionCode else @Suppress("DEPRECATION") it.versionCode.toLong() }
        val metrics = app.resources.displayMetrics
        val config = TrailmarkConfig(
            appId = appId, appSecret = appSecret, endpoint = endpoint,
            dbPath = File(app.noBackupFilesDir, "trailmark.db").path,
            deviceId = Settings.Secure.getString(app.contentResolver, Settings.Secure.ANDROID_ID),
            appVersion = info?.versionName, os = "Android", osVersion = Build.VERSION.RELEASE, model = Build.MODEL,
            locale = Locale.getDefault().toLanguageTag(), timezone = TimeZone.getDefault().id,
            appBuild = build?.toString(), manufacturer = Build.MANUFACTURER,
            screenWidth = metrics.widthPixels.toUInt(), screenHeight = metrics.heightPixels.toUInt(),
        )
        val tm = Trailmark.start(configure(config))
        ProcessLifecycleOwner.get().lifecycle.addObserver(object : DefaultLifecycleObserver {
            override fun onStart(owner: LifecycleOwner) = tm.onForeground()
            override fun onStop(owner: LifecycleOwner) = tm.onBackground()
        })
        if (autoScreenViews) trackActivities(app, tm)
        fetchAdvertisingId(app, tm)
        readInstallReferrer(app, tm)
        return tm
    }

    /**
     * Automatic screen views: a `screen_view` named after each Activity when it resumes (the
     * class's simple name: keep Activity names in R8 rules, or track screens by hand, for
     * readable names in release builds).
     */
    private fun trackActivities(app: Context, tm: Trailmark) {
        (app as? android.app.Application)?.registerActivityLifecycleCallbacks(
            object : android.app.Application.ActivityLifecycleCallbacks {
                override fun onActivityResumed(activity: android.app.Activity) = tm.screen(activity.javaClass.simpleName)
                override fun onActivityCreated(activity: android.app.Activity, state: android.os.Bundle?) = Unit
                override fun onActivityStarted(activity: android.app.Activity) = Unit
                override fun onActivityPaused(activity: android.app.Activity) = Unit
                override fun onActivityStopped(activity: android.app.Activity) = Unit
                override fun onActivitySaveInstanceState(activity: android.app.Activity, state: android.os.Bundle) = Unit
                override fun onActivityDestroyed(activity: android.app.Activity) = Unit
            },
        )
    }

    /**
     * Fetches the GAID off the main thread (Play services' `AdvertisingIdClient`, looked up by
     * reflection so apps without Play services need nothing) and hands it to the core, or null
     * when the user limited ad tracking. A pending install request carries it; a later one is
     * sent as an update.
     */
    private fun fetchAdvertisingId(app: Context, tm: Trailmark) {
        Thread({
            val id = runCatching {
                val client = Class.forName("com.google.android.gms.ads.identifier.AdvertisingIdClient")
                val info = client.getMethod("getAdvertisingIdInfo", Context::class.java).invoke(null, app)
                val limited = info.javaClass.getMethod("isLimitAdTrackingEnabled").invoke(info) as Boolean
                val gaid = if (limited) null else info.javaClass.getMethod("getId").invoke(info) as String?
                // Android 13+ without the AD_ID permission answers zeros: no id.
                gaid?.takeUnless { g -> g.all { it == '0' || it == '-' } }
            }
            // No Play services (or it failed): leave whatever the configuration said. The SDK
            // may be closed meanwhile: nothing to tell then.
            id.onSuccess { runCatching { tm.setAdvertisingId(it) } }
        }, "trailmark-gaid").start()
    }

    /** Hands the Play Install Referrer to the core (which ignores it after the first install). */
    private fun readInstallReferrer(context: Context, tm: Trailmark) {
        // When the package was installed, from whichever store: a click reported after it is
        // an injected one.
        val installedAt = runCatching {
            context.packageManager.getPackageInfo(context.packageName, 0).firstInstallTime
        }.getOrNull()?.takeIf { it > 0 }
        val client = InstallReferrerClient.newBuilder(context).build()
        client.startConnection(object : InstallReferrerStateListener {
            override fun onInstallReferrerSetupFinished(responseCode: Int) {
                if (responseCode == InstallReferrerClient.InstallReferrerResponse.OK) {
                    val details = runCatching { client.installReferrer }.getOrNull()
                    tm.setInstallReferrer(
                        details?.installReferrer,
                        // Play reports 0 when it has no time.
                        details?.referrerClickTimestampSeconds?.takeIf { it > 0 }?.times(1000),
                        details?.installBeginTimestampSeconds?.takeIf { it > 0 }?.times(1000),
                        installedAt,
                    )
                } else {
                    // Not from Play, or the service is missing.
                    tm.setInstallReferrer(null, installedAtMs = installedAt)
                }
                client.endConnection()
            }

            // The install request stops waiting on its own after 10 s.
            override fun onInstallReferrerServiceDisconnected() = Unit
        })
    }
}
