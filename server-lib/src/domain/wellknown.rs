//! The association files that let iOS universal links and Android App Links open the app for
//! the link domain's tracking links (`/c/...`) instead of the browser:
//! `/.well-known/apple-app-site-association` and `/.well-known/assetlinks.json`, built from the
//! configured apps. Pure.

use serde_json::{Value, json};

/// The link paths the apps claim: the tracking links.
pub const LINK_PATHS: &str = "/c/*";

/// Apps the link domain opens (`ServerConfig::deep_link_apps`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeepLinkApps {
    /// iOS app ids, `<team id>.<bundle id>` (e.g. `ABCDE12345.com.example.shop`).
    pub apple: Vec<String>,
    /// Android apps: package name and the SHA-256 fingerprints of their signing certificates.
    pub android: Vec<AndroidApp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidApp {
    pub package: String,
    /// `AA:BB:…` (32 bytes, upper-case hex, colon-separated).
    pub fingerprints: Vec<String>,
}

/// Why a configured app is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeepLinkAppError {
    #[error("iOS app id {0:?}: expected <10-character team id>.<bundle id>, e.g. ABCDE12345.com.example.shop")]
    AppleAppId(String),
    #[error("Android package {0:?}: expected a Java-style name such as com.example.shop")]
    Package(String),
    #[error("certificate fingerprint {0:?}: expected 32 hex bytes separated by colons (keytool -list -v prints it)")]
    Fingerprint(String),
    #[error("Android app {0:?} has no certificate fingerprint")]
    NoFingerprint(String),
}

impl DeepLinkApps {
    /// Checks every app (at build time, so a typo is an error at start, not a silent miss on
    /// devices). Fingerprints are kept in upper case.
    pub fn check(&mut self) -> Result<(), DeepLinkAppError> {
        for id in &self.apple {
            let ok = id.split_once('.').is_some_and(|(team, bundle)| {
                team.len() == 10
                    && team.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
                    && !bundle.is_empty()
                    && bundle.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            });
            if !ok {
                return Err(DeepLinkAppError::AppleAppId(id.clone()));
            }
        }
        for app in &mut self.android {
            let parts: Vec<&str> = app.package.split('.').collect();
            let ok = parts.len() >= 2
                && parts.iter().all(|p| {
                    p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            if !ok {
                return Err(DeepLinkAppError::Package(app.package.clone()));
            }
            if app.fingerprints.is_empty() {
                return Err(DeepLinkAppError::NoFingerprint(app.package.clone()));
            }
            for fp in &mut app.fingerprints {
                let bytes: Vec<&str> = fp.split(':').collect();
                if bytes.len() != 32 || !bytes.iter().all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
                {
                    return Err(DeepLinkAppError::Fingerprint(fp.clone()));
                }
                *fp = fp.to_ascii_uppercase();
            }
        }
        Ok(())
    }

    /// `apple-app-site-association`: each app claims the tracking links, in both the iOS 13+
    /// form (`appIDs`, `components`) and the older one (`appID`, `paths`). `None` without iOS
    /// apps.
    pub fn apple_app_site_association(&self) -> Option<Value> {
        if self.apple.is_empty() {
            return None;
        }
        let details: Vec<Value> = self
            .apple
            .iter()
            .map(|id| {
                json!({
                    "appID": id,
                    "appIDs": [id],
                    "components": [{"/": LINK_PATHS, "comment": "Trailmark tracking links"}],
                    "paths": [LINK_PATHS],
                })
            })
            .collect();
        Some(json!({"applinks": {"apps": [], "details": details}}))
    }

    /// `assetlinks.json`: each app may handle the domain's links. `None` without Android apps.
    pub fn asset_links(&self) -> Option<Value> {
        if self.android.is_empty() {
            return None;
        }
        let statements: Vec<Value> = self
            .android
            .iter()
            .map(|a| {
                json!({
                    "relation": ["delegate_permission/common.handle_all_urls"],
                    "target": {
                        "namespace": "android_app",
                        "package_name": a.package,
                        "sha256_cert_fingerprints": a.fingerprints,
                    },
                })
            })
            .collect();
        Some(Value::Array(statements))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "14:6d:e9:83:c5:73:06:50:d8:ee:b9:95:2f:34:fc:64:16:a0:83:42:e6:1d:be:a8:8a:04:96:b2:3f:cf:44:e5";

    #[test]
    fn apps_are_checked_and_described() {
        let mut apps = DeepLinkApps {
            apple: vec!["ABCDE12345.com.example.shop".into()],
            android: vec![AndroidApp { package: "com.example.shop".into(), fingerprints: vec![FP.into()] }],
        };
        apps.check().unwrap();
        let aasa = apps.apple_app_site_association().unwrap();
        assert_eq!(aasa["applinks"]["details"][0]["appIDs"], json!(["ABCDE12345.com.example.shop"]));
        assert_eq!(aasa["applinks"]["details"][0]["components"][0]["/"], "/c/*");
        let links = apps.asset_links().unwrap();
        assert_eq!(links[0]["target"]["package_name"], "com.example.shop");
        assert_eq!(links[0]["target"]["sha256_cert_fingerprints"][0], FP.to_uppercase());
        assert_eq!(DeepLinkApps::default().apple_app_site_association(), None);
        assert_eq!(DeepLinkApps::default().asset_links(), None);

        for bad in ["com.example.shop", "abcde12345.com.x", "ABCDE1234.com.x", "ABCDE12345.", "ABCDE12345.a/b"] {
            let mut apps = DeepLinkApps { apple: vec![bad.into()], ..Default::default() };
            assert!(matches!(apps.check(), Err(DeepLinkAppError::AppleAppId(_))), "{bad}");
        }
        for (package, fps) in
            [("shop", vec![FP]), ("com.1x", vec![FP]), ("com.example", vec!["AB:CD"]), ("com.example", vec![])]
        {
            let mut apps = DeepLinkApps {
                android: vec![AndroidApp {
                    package: package.into(),
                    fingerprints: fps.iter().map(|s| s.to_string()).collect(),
                }],
                ..Default::default()
            };
            assert!(apps.check().is_err(), "{package} {fps:?}");
        }
    }
}
