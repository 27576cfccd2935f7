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
     * Starts the SDK for this app. Call once, on the main thread (Application.onCreate).
     * [configure] may change the config (consent, GAID once the host obtained it, ...).
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
    ): Trailmark {
        val app = context.applicationContext
        val version = runCatching { app.packageManager.getPackageInfo(app.packageName, 0).versionName }.getOrNull()
        val config = TrailmarkConfig(
            appId = appId, appSecret = appSecret, endpoint = endpoint,
            dbPath = File(app.noBackupFilesDir, "trailmark.db").path,
            deviceId = Settings.Secure.getString(app.contentResolver, Settings.Secure.ANDROID_ID),
            appVersion = version, os = "Android", osVersion = Build.VERSION.RELEASE, model = Build.MODEL,
            locale = Locale.getDefault().toLanguageTag(), timezone = TimeZone.getDefault().id,
        )
        val tm = Trailmark.start(configure(config))
        ProcessLifecycleOwner.get().lifecycle.addObserver(object : DefaultLifecycleObserver {
            override fun onStart(owner: LifecycleOwner) = tm.onForeground()
            override fun onStop(owner: LifecycleOwner) = tm.onBackground()
        })
        readInstallReferrer(app, tm)
        return tm
    }

    /** Hands the Play Install Referrer to the core (which ignores it after the first install). */
    private fun readInstallReferrer(context: Context, tm: Trailmark) {
        val client = InstallReferrerClient.newBuilder(context).build()
        client.startConnection(object : InstallReferrerStateListener {
            override fun onInstallReferrerSetupFinished(responseCode: Int) {
                if (responseCode == InstallReferrerClient.InstallReferrerResponse.OK) {
                    val details = runCatching { client.installReferrer }.getOrNull()
                    tm.setInstallReferrer(
                        details?.installReferrer,
                        details?.referrerClickTimestampSeconds?.times(1000),
                        details?.installBeginTimestampSeconds?.times(1000),
                    )
                } else {
                    tm.setInstallReferrer(null) // not from Play, or the service is missing
                }
                client.endConnection()
            }

            // The install request stops waiting on its own after 10 s.
            override fun onInstallReferrerServiceDisconnected() = Unit
        })
    }
}
