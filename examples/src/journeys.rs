//! The journey simulator: a synthetic population of phones, their addresses, ad clicks, click
//! spam, click injection and installs, with the truth kept, run through the attribution engine
//! to measure how often it is right (`docs/attribution.md`, "Measured on the journey
//! simulator").
//!
//! Everything is drawn from a seeded generator, so a seed gives the same population, the same
//! journeys and the same figures. The distributions are the simulator's assumptions, written
//! down in [`Population`] and in the docs; they are meant to be realistic for one metro area of
//! a US-like market, with heavy address sharing (families on one Wi-Fi, offices, carrier NAT
//! pools where hundreds of phones share a /24).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trailmark_core::protocol::MatchType;
use trailmark_server::domain::attribution::OsFamily;
use trailmark_server::domain::attribution::fingerprint::{CAL_OFFSET, CAL_SLOPE};
use trailmark_server::domain::attribution::fraud::BurstTracker;
use trailmark_server::domain::attribution::index::{FLAG_TZ_GUESSED, prefix_of};
use trailmark_server::domain::attribution::matching::{Decision, Fingerprint, InstallFacts, LinkInfo, attribute};
use trailmark_server::domain::attribution::matching::{FingerprintHash, fingerprint_refusal};
use trailmark_server::domain::attribution::{
    AttributionConfig, DAY, HOUR, MINUTE, SECOND, Touch, TouchIndex, TouchKind,
};

/// The simulator's knobs (defaults: [`Population::default`]).
#[derive(Debug, Clone)]
pub struct Population {
    pub devices: usize,
    pub seed: u64,
    /// Days of clicks.
    pub days: i64,
    /// Share of iOS devices (the rest Android).
    pub ios_share: f64,
    /// Share of devices that click an ad of the app in the period.
    pub click_rate: f64,
    /// Share of clickers who install through the click.
    pub install_after_click: f64,
    /// Share of devices that install without any click (organic).
    pub organic_rate: f64,
    /// Spam clicks (never followed by an install, made-up profiles on real addresses) per real
    /// click.
    pub spam_per_click: f64,
    /// Share of Android installs that get an injected click (a malicious app reporting a click
    /// between the download's start and the first open).
    pub injection_rate: f64,
    /// iOS: share of people who allow tracking (App Tracking Transparency) in the app.
    pub att_allowed: f64,
    /// Android: share of installs whose Play Install Referrer is missing (the API failed or
    /// another store).
    pub referrer_missing: f64,
}

impl Default for Population {
    fn default() -> Self {
        Population {
            devices: 5_000,
            seed: 1,
            days: 7,
            ios_share: 0.55,
            click_rate: 0.30,
            install_after_click: 0.35,
            organic_rate: 0.12,
            spam_per_click: 1.0,
            injection_rate: 0.04,
            att_allowed: 0.25,
            referrer_missing: 0.05,
        }
    }
}

/// A weighted choice.
fn pick<'a, T>(rng: &mut StdRng, table: &'a [(T, f64)]) -> &'a T {
    let total: f64 = table.iter().map(|(_, w)| w).sum();
    let mut x = rng.random::<f64>() * total;
    for (v, w) in table {
        if x < *w {
            return v;
        }
        x -= w;
    }
    &table[table.len() - 1].0
}

// Distributions (shares of devices in use; rounded public figures of late 2026 for a US-like
// market — the simulator needs their shape, not their exact values).
const IOS_VERSIONS: &[(&str, f64)] =
    &[("26.1", 0.22), ("26.0", 0.10), ("18.6", 0.30), ("18.5", 0.10), ("18.3", 0.06), ("17.6", 0.12), ("16.7", 0.10)];
/// iPhone models as the SDK reports them, with their screens (pixels).
const IPHONES: &[((&str, &str), f64)] = &[
    (("iPhone17,1", "1206x2622"), 0.08),
    (("iPhone17,2", "1320x2868"), 0.07),
    (("iPhone17,3", "1179x2556"), 0.10),
    (("iPhone16,1", "1179x2556"), 0.08),
    (("iPhone16,2", "1290x2796"), 0.08),
    (("iPhone15,4", "1179x2556"), 0.09),
    (("iPhone15,2", "1179x2556"), 0.08),
    (("iPhone14,5", "1170x2532"), 0.11),
    (("iPhone14,7", "1170x2532"), 0.08),
    (("iPhone13,2", "1170x2532"), 0.09),
    (("iPhone12,1", "828x1792"), 0.08),
    (("iPhone14,6", "750x1334"), 0.06),
];
const ANDROID_VERSIONS: &[(&str, f64)] =
    &[("16", 0.12), ("15", 0.30), ("14", 0.25), ("13", 0.15), ("12", 0.10), ("11", 0.08)];
const ANDROIDS: &[((&str, &str), f64)] = &[
    (("SM-S931U", "1080x2340"), 0.10),
    (("SM-S921U", "1080x2340"), 0.08),
    (("SM-A156U", "1080x2340"), 0.09),
    (("SM-A256U", "1080x2340"), 0.07),
    (("SM-S928U", "1440x3120"), 0.05),
    (("Pixel 9", "1080x2424"), 0.06),
    (("Pixel 8a", "1080x2400"), 0.05),
    (("Pixel 7", "1080x2400"), 0.05),
    (("moto g play - 2024", "720x1600"), 0.07),
    (("moto g stylus 5G - 2024", "1080x2400"), 0.04),
    (("SM-G991U", "1080x2400"), 0.05),
    (("SM-A146U", "1080x2408"), 0.06),
    (("motorola razr 2024", "1080x2640"), 0.03),
    (("CPH2513", "1080x2412"), 0.03),
    (("SM-F946U", "1812x2176"), 0.03),
    (("Pixel 6a", "1080x2400"), 0.04),
    (("SM-A536U", "1080x2400"), 0.06),
];
const LOCALES: &[(&str, f64)] =
    &[("en-US", 0.80), ("es-US", 0.12), ("zh-CN", 0.03), ("vi-VN", 0.02), ("ko-KR", 0.02), ("fr-FR", 0.01)];
const ZONES: &[(&str, f64)] =
    &[("America/New_York", 0.47), ("America/Chicago", 0.29), ("America/Denver", 0.07), ("America/Los_Angeles", 0.17)];
/// Carriers and their shares of phones.
const CARRIERS: &[(usize, f64)] = &[(0, 0.40), (1, 0.35), (2, 0.25)];
/// Phones of the population per public address of a carrier's NAT pool (a pool per carrier
/// and region, all in one /24, 8 to 64 addresses): with 5,000 phones, 100 to 950 phones share
/// a pool; past 768 phones per pool the addresses get more crowded.
const PHONES_PER_NAT_ADDRESS: usize = 12;
/// Households per residential /24.
const HOUSEHOLDS_PER_NET: u32 = 30;
const DEVICES_PER_HOUSEHOLD: &[(usize, f64)] = &[(1, 0.30), (2, 0.30), (3, 0.20), (4, 0.15), (5, 0.05)];

/// Campaigns: (campaign id, network). The last two are bought from networks that spam clicks.
pub const CAMPAIGNS: &[(&str, &str)] = &[
    ("c_search", "google"),
    ("c_social", "meta"),
    ("c_video", "tiktok"),
    ("c_retarget", "meta"),
    ("c_display", "applovin"),
    ("c_brand", "google"),
    ("c_spammy_a", "spamnet"),
    ("c_spammy_b", "spamnet"),
];

#[derive(Debug, Clone)]
pub struct Device {
    pub ios: bool,
    pub os_version: &'static str,
    pub model: &'static str,
    pub screen: &'static str,
    pub locale: &'static str,
    pub zone: usize,
    pub carrier: usize,
    pub home: Ipv4Addr,
    pub office: Option<Ipv4Addr>,
    pub att: bool,
    /// Addresses in the device's carrier NAT pool.
    pub pool: u32,
    pub idfa: String,
    pub gaid: String,
}

/// What a click reveals (from its user agent, headers, GeoIP and landing page).
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub os: &'static str,
    pub os_version: Option<&'static str>,
    pub model: Option<&'static str>,
    pub locale: Option<&'static str>,
    pub timezone: Option<&'static str>,
    /// The time zone is a GeoIP guess.
    pub tz_guessed: bool,
    pub screen: Option<&'static str>,
}

#[derive(Debug, Clone)]
pub struct Click {
    pub id: uuid::Uuid,
    pub ts: i64,
    pub campaign: usize,
    pub ip: Ipv4Addr,
    pub seen: Seen,
    /// A device id the network passed on the click (GAID / IDFA).
    pub device_id: Option<String>,
    /// The clicking device; none for spam from made-up profiles.
    pub device: Option<usize>,
    /// Spam (never followed by an install it caused) or injected.
    pub fake: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Came from no click.
    Organic,
    /// The app or the store names the click (Play referrer), or the click carried the device id
    /// the install sends.
    Deterministic,
    /// Came from a click that only a fingerprint can find, on the same network and allowed by
    /// the default policy.
    Matchable,
    /// As `Matchable`, but an iOS install without tracking permission (matchable only with
    /// `fingerprint_ios_without_att`).
    MatchableIosNoAtt,
    /// Came from a click that no method can find (another network at install, out of the
    /// fingerprint window, a fingerprint-refusing policy).
    Unmatchable,
}

#[derive(Debug, Clone)]
pub struct Install {
    pub ts: i64,
    pub begin_ts: Option<i64>,
    /// When the package was installed (Android's `firstInstallTime`: every Android install).
    pub installed_at: Option<i64>,
    pub device: usize,
    pub ip: Ipv4Addr,
    pub referrer: Option<String>,
    pub referrer_click: Option<uuid::Uuid>,
    /// The campaign of the device's last real click (the truth); none for organic.
    pub truth: Option<usize>,
    pub path: Path,
    /// An injected click was reported for this install.
    pub injected: bool,
}

#[derive(Debug, Clone)]
pub enum Event {
    Click(Click),
    Install(Install),
}

impl Event {
    fn ts(&self) -> i64 {
        match self {
            Event::Click(c) => c.ts,
            Event::Install(i) => i.ts,
        }
    }
}

/// A generated population and its journeys, in time order.
pub struct World {
    pub devices: Vec<Device>,
    pub events: Vec<Event>,
}

fn net24(ip: Ipv4Addr) -> u32 {
    u32::from(ip) >> 8
}

/// Start of the simulated period (2026-11-02, a Monday, 00:00 UTC).
pub const START: i64 = 1_793_577_600_000;

impl Population {
    /// Draws the population and its journeys.
    pub fn generate(&self) -> World {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut devices = Vec::with_capacity(self.devices);
        // Households, each on its own address; 30 to a residential /24, per region.
        let mut next_household: Vec<u32> = vec![0; ZONES.len()];
        let mut offices: Vec<Vec<(Ipv4Addr, usize)>> = vec![Vec::new(); ZONES.len()];
        while devices.len() < self.devices {
            let zone = ZONES.iter().position(|z| z.0 == *pick(&mut rng, ZONES)).unwrap_or(0);
            let h = next_household[zone];
            next_household[zone] += 1;
            // Residential /24s: (region).(0–199).(…).x, up to 30 households each.
            let net = h / HOUSEHOLDS_PER_NET;
            let home = Ipv4Addr::from(
                (zone as u32 + 1) << 24 | (net / 256) << 16 | (net % 256) << 8 | (2 + h % HOUSEHOLDS_PER_NET * 7),
            );
            let n = *pick(&mut rng, DEVICES_PER_HOUSEHOLD);
            let family_locale = *pick(&mut rng, LOCALES);
            let family_ios = rng.random::<f64>() < self.ios_share;
            for _ in 0..n {
                let ios = if rng.random::<f64>() < 0.7 { family_ios } else { rng.random::<f64>() < self.ios_share };
                let ((model, screen), os_version) = if ios {
                    (*pick(&mut rng, IPHONES), *pick(&mut rng, IOS_VERSIONS))
                } else {
                    (*pick(&mut rng, ANDROIDS), *pick(&mut rng, ANDROID_VERSIONS))
                };
                let locale = if rng.random::<f64>() < 0.9 { family_locale } else { *pick(&mut rng, LOCALES) };
                // One in six works in an office of about 40 phones (one address, 9 to 17 h).
                let office = (rng.random::<f64>() < 1.0 / 6.0).then(|| {
                    let list = &mut offices[zone];
                    if list.last().is_none_or(|o| o.1 >= 40) {
                        let k = list.len() as u32;
                        list.push((
                            Ipv4Addr::from(((zone as u32 + 1) << 24) | 250 << 16 | (k / 200) << 8 | (k % 200)),
                            0,
                        ));
                    }
                    let o = list.last_mut().expect("an office");
                    o.1 += 1;
                    o.0
                });
                let idfa = uuid::Uuid::from_u128(rng.random()).to_string().to_uppercase();
                let gaid = uuid::Uuid::from_u128(rng.random()).to_string();
                devices.push(Device {
                    ios,
                    os_version,
                    model,
                    screen,
                    locale,
                    zone,
                    carrier: *pick(&mut rng, CARRIERS),
                    home,
                    office,
                    att: rng.random::<f64>() < self.att_allowed,
                    pool: 0,
                    idfa,
                    gaid,
                });
            }
        }
        devices.truncate(self.devices);
        let mut per_pool: HashMap<(usize, usize), usize> = HashMap::new();
        for d in &devices {
            *per_pool.entry((d.carrier, d.zone)).or_default() += 1;
        }
        for d in &mut devices {
            d.pool = (per_pool[&(d.carrier, d.zone)] / PHONES_PER_NAT_ADDRESS).clamp(8, 64) as u32;
        }

        let mut events = Vec::new();
        let period = self.days * DAY;
        // A time of day people use their phones (8 to 24 h local, about), as an offset in the period.
        let when = |rng: &mut StdRng| -> i64 {
            let day = rng.random_range(0..self.days);
            START + day * DAY + 12 * HOUR + rng.random_range(0..16 * HOUR)
        };
        let mut clicks_made = 0usize;
        for (d, dev) in devices.iter().enumerate() {
            let clicks = rng.random::<f64>() < self.click_rate;
            let mut last_real: Option<(i64, usize, Ipv4Addr)> = None;
            let mut context = Context::draw(&mut rng, dev, 0);
            if clicks {
                let t = when(&mut rng);
                let campaign = rng.random_range(0..6);
                let ip = context.address(&mut rng, dev);
                events.push(Event::Click(click_of(&mut rng, dev, d, t, campaign, ip)));
                clicks_made += 1;
                last_real = Some((t, campaign, ip));
                // Some click again: the same campaign, or another one, within six hours.
                let again: f64 = rng.random();
                if again < 0.20 {
                    let t2 = t + rng.random_range(MINUTE..6 * HOUR);
                    let campaign2 = if again < 0.10 { campaign } else { rng.random_range(0..6) };
                    context = context.later(&mut rng, dev, t2 - t);
                    let ip2 = context.address(&mut rng, dev);
                    events.push(Event::Click(click_of(&mut rng, dev, d, t2, campaign2, ip2)));
                    clicks_made += 1;
                    last_real = Some((t2, campaign2, ip2));
                }
            }
            let install_at = match last_real {
                Some((t, _, _)) if rng.random::<f64>() < self.install_after_click => {
                    Some(t + click_to_install(&mut rng))
                }
                Some(_) if rng.random::<f64>() < 0.03 => Some(START + period + rng.random_range(8 * DAY..9 * DAY)),
                None if rng.random::<f64>() < self.organic_rate => Some(START + rng.random_range(0..period + DAY)),
                _ => None,
            };
            let Some(ts) = install_at else { continue };
            let truth = last_real.filter(|(t, ..)| ts - t <= 7 * DAY);
            let delay = truth.map(|(t, ..)| ts - t).unwrap_or(DAY);
            let context = context.later(&mut rng, dev, delay);
            let ip = context.address(&mut rng, dev);
            // The package was installed 2 to 40 s before the first open (15 % open it 1 minute to
            // 6 hours later), its download took 15 s to 3 min; each at most half (a quarter) of
            // the click-to-install time, so both follow the click.
            let gap = if rng.random::<f64>() < 0.85 {
                rng.random_range(2 * SECOND..40 * SECOND)
            } else {
                rng.random_range(MINUTE..6 * HOUR)
            };
            let installed = ts - gap.min(delay / 2);
            let begin = installed - rng.random_range(15 * SECOND..3 * MINUTE).min(delay / 4);
            let mut install = Install {
                ts,
                begin_ts: None,
                installed_at: (!dev.ios).then_some(installed),
                device: d,
                ip,
                referrer: None,
                referrer_click: None,
                truth: truth.map(|t| t.1),
                path: if truth.is_some() { Path::Unmatchable } else { Path::Organic },
                injected: false,
            };
            if !dev.ios && rng.random::<f64>() >= self.referrer_missing {
                install.begin_ts = Some(begin);
                // The store hands over the click (its id was in the Play referrer) or says organic.
                let click = events.iter().rev().find_map(|e| match e {
                    Event::Click(c) if c.device == Some(d) && !c.fake && c.ts <= ts => Some(c.id),
                    _ => None,
                });
                match (truth, click) {
                    (Some(_), Some(id)) => {
                        install.referrer =
                            Some(format!("tm_click_id={id}&utm_source={}", CAMPAIGNS[install.truth.unwrap_or(0)].1));
                        install.referrer_click = Some(id);
                    }
                    _ => install.referrer = Some("utm_source=google-play&utm_medium=organic".into()),
                }
            }
            if let Some((t, campaign, click_ip)) = truth {
                // A click of the device inside the click window carried its advertising id.
                let _ = campaign;
                let device_id_on_click = events.iter().any(|e| {
                    matches!(e, Event::Click(c) if c.device == Some(d) && !c.fake && c.ts <= ts && ts - c.ts <= 7 * DAY && c.device_id.is_some())
                });
                let install_sends_id = !dev.ios || dev.att;
                install.path = if install.referrer_click.is_some() || (device_id_on_click && install_sends_id) {
                    Path::Deterministic
                } else if ts - t > DAY || net24(click_ip) != net24(ip) || install.referrer.is_some() {
                    Path::Unmatchable
                } else if dev.ios && !dev.att {
                    Path::MatchableIosNoAtt
                } else {
                    Path::Matchable
                };
            }
            // Click injection: a malicious app on the phone reports a click with the device's
            // advertising id between the download's start and the first open.
            if !dev.ios && rng.random::<f64>() < self.injection_rate {
                install.injected = true;
                // Reported on the "package added" broadcast: 0.2 to 3 s after the package was
                // installed, before the first open.
                let at = (installed + rng.random_range(200..3 * SECOND)).min(ts - 100);
                let mut c = click_of(&mut rng, dev, d, at, 6, ip);
                c.device_id = Some(dev.gaid.clone());
                c.fake = true;
                events.push(Event::Click(c));
            }
            events.push(Event::Install(install));
        }
        // Spam: made-up profiles on the addresses real phones use (residential, office and
        // carrier pools), reported as clicks by the spamming networks, never installing.
        let spam = (clicks_made as f64 * self.spam_per_click) as usize;
        for _ in 0..spam {
            let real = &devices[rng.random_range(0..devices.len())];
            let mut fake = Device { ..real.clone() };
            fake.ios = rng.random::<f64>() < self.ios_share;
            let ((model, screen), os_version) = if fake.ios {
                (*pick(&mut rng, IPHONES), *pick(&mut rng, IOS_VERSIONS))
            } else {
                (*pick(&mut rng, ANDROIDS), *pick(&mut rng, ANDROID_VERSIONS))
            };
            (fake.model, fake.screen, fake.os_version) = (model, screen, os_version);
            fake.locale = *pick(&mut rng, LOCALES);
            let ip = Context::draw(&mut rng, real, 0).address(&mut rng, real);
            let t = START + rng.random_range(0..period);
            let campaign = 6 + rng.random_range(0..2);
            let mut c = click_of(&mut rng, &fake, usize::MAX, t, campaign, ip);
            c.device = None;
            c.fake = true;
            c.device_id = None;
            events.push(Event::Click(c));
        }
        events.sort_by_key(Event::ts);
        World { devices, events }
    }
}

/// Where a phone is: at home, at the office or on its carrier (with the pool address it holds).
#[derive(Debug, Clone, Copy)]
enum Context {
    Home,
    Office,
    Cellular(u32),
}

impl Context {
    fn draw(rng: &mut StdRng, dev: &Device, _t: i64) -> Self {
        let x: f64 = rng.random();
        if dev.office.is_some() && x < 0.12 {
            Context::Office
        } else if x < 0.55 {
            Context::Home
        } else {
            Context::Cellular(rng.random_range(0..dev.pool))
        }
    }

    /// Where the phone is `after` ms later: most stay put within the hour; on a carrier the
    /// NAT address is kept for a while and then changes within the pool.
    fn later(self, rng: &mut StdRng, dev: &Device, after: i64) -> Self {
        let stay = if after < HOUR {
            0.85
        } else if after < 6 * HOUR {
            0.55
        } else {
            0.45
        };
        if rng.random::<f64>() >= stay {
            return Context::draw(rng, dev, after);
        }
        match self {
            Context::Cellular(a) if after > 30 * MINUTE || rng.random::<f64>() < 0.3 => {
                let _ = a;
                Context::Cellular(rng.random_range(0..dev.pool))
            }
            other => other,
        }
    }

    fn address(self, _rng: &mut StdRng, dev: &Device) -> Ipv4Addr {
        match self {
            Context::Home => dev.home,
            Context::Office => dev.office.unwrap_or(dev.home),
            Context::Cellular(a) => {
                Ipv4Addr::from((60 + dev.carrier as u32) << 24 | (dev.zone as u32 + 1) << 16 | 7 << 8 | (10 + a))
            }
        }
    }
}

/// Click-to-install time: most within the hour (log-normal, median 8 minutes, at least 20 s),
/// one in ten between one and 48 hours.
fn click_to_install(rng: &mut StdRng) -> i64 {
    if rng.random::<f64>() < 0.10 {
        return rng.random_range(HOUR..48 * HOUR);
    }
    // Box–Muller for a normal draw.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let minutes = (8f64.ln() + 1.2 * z).exp();
    // Store page, download and first open take 20 s at the least.
    ((minutes * MINUTE as f64) as i64).clamp(20 * SECOND, 7 * DAY)
}

/// A click by `dev` on `campaign`: what its browser and headers reveal.
fn click_of(rng: &mut StdRng, dev: &Device, d: usize, ts: i64, campaign: usize, ip: Ipv4Addr) -> Click {
    // In-app browsers of social apps send the full user agent (iOS's Facebook browser names the
    // model; Android web views name model and version); Safari names the iOS version only;
    // Chrome on Android sends the reduced agent ("Android 10; K": neither version nor model).
    let in_app = rng.random::<f64>() < 0.55;
    let (os_version, model) = match (dev.ios, in_app) {
        (true, true) => (Some(dev.os_version), (rng.random::<f64>() < 0.5).then_some(dev.model)),
        (true, false) => (Some(dev.os_version), None),
        (false, true) => (Some(dev.os_version), Some(dev.model)),
        (false, false) => (None, None),
    };
    // Accept-Language is the phone's language, except when the browser has its own setting.
    let locale = Some(if rng.random::<f64>() < 0.93 { dev.locale } else { "en-US" });
    // The time zone comes from a GeoIP lookup of the address (known for 80 %; a carrier's
    // address is sometimes placed in a neighbouring zone).
    let timezone = (rng.random::<f64>() < 0.8).then(|| {
        let z = if rng.random::<f64>() < 0.95 { dev.zone } else { (dev.zone + 1) % ZONES.len() };
        ZONES[z].0
    });
    // A landing page that runs script reports the screen.
    let screen = (rng.random::<f64>() < 0.15).then_some(dev.screen);
    let device_id = match dev.ios {
        false if in_app && rng.random::<f64>() < 0.45 => Some(dev.gaid.clone()),
        true if in_app && dev.att && rng.random::<f64>() < 0.4 => Some(dev.idfa.clone()),
        _ => None,
    };
    Click {
        id: uuid::Uuid::from_u128(rng.random()),
        ts,
        campaign,
        ip,
        seen: Seen {
            os: if dev.ios { "iOS" } else { "Android" },
            os_version,
            model,
            locale,
            timezone,
            tz_guessed: timezone.is_some(),
            screen,
        },
        device_id,
        device: (d != usize::MAX).then_some(d),
        fake: false,
    }
}

/// One install's decision next to its truth.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ios: bool,
    pub path: Path,
    pub truth: Option<usize>,
    pub injected: bool,
    pub match_type: MatchType,
    pub campaign: Option<usize>,
    pub rejected: bool,
    pub reason: Option<String>,
    /// The best fingerprint campaign and its confidence, when the step ran and had candidates.
    pub best: Option<(usize, f64)>,
    /// The decision's winner was the injected click.
    pub injected_won: bool,
    /// The winning click was a real click by the installing device.
    pub own_click: bool,
    /// The policy let the fingerprint step run for this install (it was reached or not).
    pub fp_allowed: bool,
}

/// Runs the journeys through the engine in time order: clicks into the touch index, installs
/// decided, then seen on their address (as the server does). With `TM_JOURNEYS_DEBUG` set,
/// every matchable install the fingerprint step missed (with its own click's evidence) and
/// every injected click that got through is printed to stderr.
pub fn run(world: &World, cfg: &AttributionConfig) -> Vec<Outcome> {
    run_with(world, cfg, false)
}

/// The fingerprint step as it was before issue 25 (the same waterfall otherwise), on the same
/// journeys: a weighted sum of agreeing facts (same address 0.35, else same network 0.15; OS
/// 0.10, version 0.15, model 0.15, locale 0.10, time zone 0.10, screen 0.05), the newest click
/// scoring 0.6 or more wins, every platform fingerprinted, store referrers and the package's
/// install time not used. For the comparison in docs/attribution.md.
pub fn run_before(world: &World) -> Vec<Outcome> {
    run_with(world, &AttributionConfig::default(), true)
}

/// The score of the fingerprint step before issue 25.
fn score_before(t: &Touch, ip: &[u8; 16], fp: &FingerprintHash) -> Option<f64> {
    if t.os != OsFamily::Unknown && fp.os != OsFamily::Unknown && t.os != fp.os {
        return None;
    }
    let same = |a: u32, b: u32| a != 0 && a == b;
    let mut s = if t.ip == *ip {
        0.35
    } else if prefix_of(&t.ip) == prefix_of(ip) {
        0.15
    } else {
        0.0
    };
    if t.os != OsFamily::Unknown && t.os == fp.os {
        s += 0.10;
    }
    for (a, b, w) in [
        (t.os_version, fp.os_version, 0.15),
        (t.model, fp.model, 0.15),
        (t.locale, fp.locale, 0.10),
        (t.timezone, fp.timezone, 0.10),
        (t.screen, fp.screen, 0.05),
    ] {
        if same(a, b) {
            s += w;
        }
    }
    Some((s * 1000.0f64).round() / 1000.0)
}

fn run_with(world: &World, cfg: &AttributionConfig, before: bool) -> Vec<Outcome> {
    // Before: the engine's own fingerprint step is off; the old one runs after the waterfall.
    let off = AttributionConfig { fingerprint_threshold: 2.0, ..cfg.clone() };
    let cfg = if before { &off } else { cfg };
    let links: Vec<Arc<LinkInfo>> = CAMPAIGNS
        .iter()
        .map(|(c, n)| {
            Arc::new(LinkInfo {
                link_id: format!("l_{c}"),
                campaign_id: (*c).to_owned(),
                app_id: "app".into(),
                network: (*n).to_owned(),
                deep_link: None,
            })
        })
        .collect();
    let campaign_of: HashMap<&str, usize> = CAMPAIGNS.iter().enumerate().map(|(i, (c, _))| (*c, i)).collect();
    let mut index = TouchIndex::new(cfg.index_ttl());
    let mut burst = BurstTracker::default();
    let mut injected_clicks: HashMap<uuid::Uuid, ()> = HashMap::new();
    let mut clicker: HashMap<uuid::Uuid, usize> = HashMap::new();
    let mut out = Vec::new();
    for e in &world.events {
        match e {
            Event::Click(c) => {
                let mut t = Touch::new(c.id, TouchKind::Click, c.ts, c.campaign as u32);
                t.set_ip(Some(IpAddr::V4(c.ip)));
                t.device = index.hasher.device(c.device_id.as_deref());
                if c.seen.tz_guessed {
                    t.flags |= FLAG_TZ_GUESSED;
                }
                let s = &c.seen;
                Fingerprint {
                    os: Some(s.os),
                    os_version: s.os_version,
                    model: s.model,
                    locale: s.locale,
                    timezone: s.timezone,
                    screen: s.screen,
                }
                .hash(&index.hasher)
                .apply(&mut t);
                if c.fake && c.device_id.is_some() {
                    injected_clicks.insert(c.id, ());
                }
                if let (Some(d), false) = (c.device, c.fake) {
                    clicker.insert(c.id, d);
                }
                index.expire(c.ts);
                index.push(t);
            }
            Event::Install(i) => {
                let dev = &world.devices[i.device];
                let mut ids: Vec<&str> = Vec::new();
                if dev.ios {
                    if dev.att {
                        ids.push(&dev.idfa);
                    }
                } else {
                    ids.push(&dev.gaid);
                }
                let lower: Vec<String> = ids.iter().map(|s| s.to_ascii_lowercase()).collect();
                let fp = Fingerprint {
                    os: Some(if dev.ios { "iOS" } else { "Android" }),
                    os_version: Some(dev.os_version),
                    model: Some(dev.model),
                    locale: Some(dev.locale),
                    timezone: Some(ZONES[dev.zone].0),
                    screen: Some(dev.screen),
                };
                let facts = InstallFacts {
                    app_id: "app",
                    install_ts: i.ts,
                    received_at: i.ts,
                    install_begin_ts: i.begin_ts,
                    installed_at: i.installed_at,
                    click_id: None,
                    referrer_click_id: i.referrer_click,
                    device_ids: lower.iter().map(String::as_str).collect(),
                    ip: Some(IpAddr::V4(i.ip)),
                    fingerprint: fp,
                    anonymous_ip: false,
                    attribution_denied: false,
                    store_referrer: !before && i.referrer.is_some(),
                    tracking_authorized: before || (dev.ios && dev.att),
                };
                let facts = InstallFacts { installed_at: if before { None } else { facts.installed_at }, ..facts };
                let d: Decision = attribute(&facts, &index, &links, cfg, &mut burst);
                if before && d.winner.is_none() {
                    let mut probe = Touch::new(uuid::Uuid::nil(), TouchKind::Click, 0, 0);
                    probe.set_ip(facts.ip);
                    let fph = fp.hash(&index.hasher);
                    let won = index
                        .by_network(facts.ip, i.ts - cfg.fingerprint_window)
                        .take(cfg.fingerprint_max_candidates)
                        .filter(|t| t.kind == TouchKind::Click && t.ts <= i.ts)
                        .find(|t| score_before(t, &probe.ip, &fph).is_some_and(|s| s >= 0.6))
                        .copied();
                    if let Some(t) = won {
                        let rejected =
                            i.begin_ts.is_some_and(|b| b < t.ts) || i.ts - t.ts < cfg.fraud.min_click_to_install;
                        out.push(Outcome {
                            ios: dev.ios,
                            path: i.path,
                            truth: i.truth,
                            injected: i.injected,
                            match_type: if rejected { MatchType::Organic } else { MatchType::Fingerprint },
                            campaign: Some(t.link as usize),
                            rejected,
                            reason: None,
                            best: None,
                            injected_won: injected_clicks.contains_key(&t.click_id()),
                            own_click: clicker.get(&t.click_id()) == Some(&i.device),
                            fp_allowed: true,
                        });
                        continue;
                    }
                }
                if std::env::var_os("TM_JOURNEYS_DEBUG").is_some()
                    && matches!(i.path, Path::Matchable | Path::MatchableIosNoAtt)
                    && d.result.match_type != MatchType::Fingerprint
                {
                    let own = d.candidates().into_iter().find(|c| {
                        c.click_id.parse::<uuid::Uuid>().ok().and_then(|id| clicker.get(&id)) == Some(&i.device)
                    });
                    eprintln!(
                        "miss\tios={}\tverdict={}\town={}\tconf={:.2}\tlookalikes={:.1}",
                        dev.ios,
                        d.fingerprint.as_ref().map(|f| f.verdict).unwrap_or("-"),
                        own.map(|c| format!(
                            "{}|same_addr={}|tf={:.3}|agree={}|unknown={}",
                            c.reason.unwrap_or("eligible"),
                            c.evidence.map(|e| e.same_address).unwrap_or(false),
                            c.evidence.map(|e| e.time_factor).unwrap_or(0.0),
                            c.evidence.map(|e| e.agree).unwrap_or(0),
                            c.evidence.map(|e| e.unknown).unwrap_or(0)
                        ))
                        .unwrap_or_else(|| "none".into()),
                        d.fingerprint.as_ref().map(|f| f.confidence).unwrap_or(0.0),
                        d.fingerprint.as_ref().map(|f| f.lookalikes).unwrap_or(0.0),
                    );
                }
                if std::env::var_os("TM_JOURNEYS_DEBUG").is_some()
                    && i.path == Path::Deterministic
                    && d.result.fraud.rejected
                {
                    eprintln!(
                        "det rejected: install={} begin={:?} installed={:?} referrer={:?} cands={}",
                        i.ts,
                        i.begin_ts,
                        i.installed_at,
                        i.referrer_click,
                        serde_json::to_string(&d.candidates()).unwrap_or_default()
                    );
                }
                if std::env::var_os("TM_JOURNEYS_DEBUG").is_some()
                    && d.winner.as_ref().is_some_and(|(t, _)| injected_clicks.contains_key(&t.click_id()))
                    && !d.result.fraud.rejected
                {
                    let t = d.winner.as_ref().map(|w| w.0.ts).unwrap_or(0);
                    eprintln!(
                        "injection-missed begin={:?} click={} install={} type={:?} rules={:?}",
                        i.begin_ts.map(|b| b - t),
                        0,
                        i.ts - t,
                        d.result.match_type,
                        d.rules
                    );
                }
                let best = d.fingerprint.as_ref().and_then(|s| {
                    s.campaigns
                        .first()
                        .and_then(|c| campaign_of.get(c.campaign_id.as_str()))
                        .map(|&c| (c, s.confidence))
                });
                out.push(Outcome {
                    ios: dev.ios,
                    path: i.path,
                    truth: i.truth,
                    injected: i.injected,
                    match_type: d.result.match_type,
                    campaign: d.result.campaign_id.as_deref().and_then(|c| campaign_of.get(c).copied()),
                    rejected: d.result.fraud.rejected,
                    reason: d.result.reason.clone(),
                    best,
                    injected_won: d.winner.as_ref().is_some_and(|(t, _)| injected_clicks.contains_key(&t.click_id())),
                    own_click: d.winner.as_ref().is_some_and(|(t, _)| clicker.get(&t.click_id()) == Some(&i.device)),
                    // Before issue 25 every install with an address was fingerprinted.
                    fp_allowed: before || fingerprint_refusal(&facts, cfg).is_none(),
                });
                // The server notes the install on its address (the crowd the next install meets).
                let mut t = Touch::new(
                    uuid::Uuid::from_u128(i.ts as u128 ^ (i.device as u128) << 64),
                    TouchKind::Install,
                    i.ts,
                    u32::MAX,
                );
                t.set_ip(Some(IpAddr::V4(i.ip)));
                fp.hash(&index.hasher).apply(&mut t);
                index.push(t);
            }
        }
    }
    out
}

/// Precision and recall figures of one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub installs: usize,
    /// Fingerprint matches, and how many were right.
    pub fp_matched: usize,
    pub fp_right: usize,
    /// Installs a fingerprint could find (by the default policy), and how many it found right.
    pub fp_matchable: usize,
    pub fp_found: usize,
    /// Organic installs, and how many were attributed anyway; the same among those the policy
    /// lets the fingerprint step weigh (the ones it could get wrong).
    pub organic: usize,
    pub organic_attributed: usize,
    pub organic_fp_allowed: usize,
    pub organic_fp_allowed_attributed: usize,
    /// Deterministic (click id, referrer, device id) matches, right ones, and installs that had a
    /// deterministic path.
    pub det_matched: usize,
    pub det_right: usize,
    pub det_possible: usize,
    pub det_found: usize,
    /// Installs whose winner was an injected click, and how many were rejected.
    pub injected_won: usize,
    pub injected_rejected: usize,
    /// Installs without injection, and how many a fraud rule rejected.
    pub legit: usize,
    pub legit_rejected: usize,
    /// Organic answers with reason `ambiguous`.
    pub ambiguous: usize,
}

impl Report {
    /// `ios`: only iOS (`Some(true)`), only Android (`Some(false)`), both (`None`).
    /// `ios_no_att_matchable`: count iOS installs without tracking permission as matchable
    /// (when the run allowed fingerprinting them).
    pub fn of(outcomes: &[Outcome], ios: Option<bool>, ios_no_att_matchable: bool) -> Report {
        let mut r = Report::default();
        for o in outcomes.iter().filter(|o| ios.is_none_or(|i| i == o.ios)) {
            r.installs += 1;
            let attributed = o.campaign.is_some() && !o.rejected;
            // A fingerprint match is right when it names a click the device made, of the campaign
            // of its last click.
            let right = attributed && o.campaign == o.truth && o.own_click;
            let matchable = o.path == Path::Matchable || (ios_no_att_matchable && o.path == Path::MatchableIosNoAtt);
            if o.match_type == MatchType::Fingerprint {
                r.fp_matched += 1;
                r.fp_right += right as usize;
            }
            if matchable {
                r.fp_matchable += 1;
                r.fp_found += (right && o.match_type == MatchType::Fingerprint) as usize;
            }
            if o.truth.is_none() && !o.injected {
                r.organic += 1;
                r.organic_attributed += attributed as usize;
                if o.fp_allowed {
                    r.organic_fp_allowed += 1;
                    r.organic_fp_allowed_attributed += attributed as usize;
                }
            }
            // A deterministic match is right when it names a click the device made.
            let det = matches!(o.match_type, MatchType::ClickId | MatchType::Referrer | MatchType::DeviceId);
            if det && !o.injected_won {
                r.det_matched += 1;
                r.det_right += o.own_click as usize;
            }
            if o.path == Path::Deterministic {
                if std::env::var_os("TM_JOURNEYS_DEBUG").is_some() && !(det && o.own_click && !o.rejected) {
                    eprintln!("deterministic missed: {o:?}");
                }
                r.det_possible += 1;
                r.det_found += (det && o.own_click && !o.rejected) as usize;
            }
            if o.injected_won {
                r.injected_won += 1;
                r.injected_rejected += o.rejected as usize;
            }
            if !o.injected {
                r.legit += 1;
                r.legit_rejected += o.rejected as usize;
            }
            r.ambiguous += (o.reason.as_deref() == Some("ambiguous")) as usize;
        }
        r
    }

    fn ratio(a: usize, b: usize) -> f64 {
        if b == 0 { f64::NAN } else { a as f64 / b as f64 }
    }
    pub fn fp_precision(&self) -> f64 {
        Self::ratio(self.fp_right, self.fp_matched)
    }
    pub fn fp_recall(&self) -> f64 {
        Self::ratio(self.fp_found, self.fp_matchable)
    }
    pub fn organic_false_rate(&self) -> f64 {
        Self::ratio(self.organic_attributed, self.organic)
    }
    pub fn organic_fp_allowed_false_rate(&self) -> f64 {
        Self::ratio(self.organic_fp_allowed_attributed, self.organic_fp_allowed)
    }
    pub fn det_precision(&self) -> f64 {
        Self::ratio(self.det_right, self.det_matched)
    }
    pub fn det_recall(&self) -> f64 {
        Self::ratio(self.det_found, self.det_possible)
    }
    pub fn injection_recall(&self) -> f64 {
        Self::ratio(self.injected_rejected, self.injected_won)
    }
    pub fn legit_rejected_rate(&self) -> f64 {
        Self::ratio(self.legit_rejected, self.legit)
    }

    /// One line of figures.
    pub fn line(&self) -> String {
        format!(
            "installs={} fingerprint: matched={} precision={:.3} recall={:.3} (of {} matchable) | organic false={:.3} (of {}; {:.3} of the {} the step may weigh) | deterministic precision={:.3} recall={:.3} (of {}) | injection recall={:.3} (of {}) legit rejected={:.4} | ambiguous={}",
            self.installs,
            self.fp_matched,
            self.fp_precision(),
            self.fp_recall(),
            self.fp_matchable,
            self.organic_false_rate(),
            self.organic,
            self.organic_fp_allowed_false_rate(),
            self.organic_fp_allowed,
            self.det_precision(),
            self.det_recall(),
            self.det_possible,
            self.injection_recall(),
            self.injected_won,
            self.legit_rejected_rate(),
            self.ambiguous,
        )
    }
}

/// Per match type: how many installs were answered with it and how many of those were right (a
/// deterministic or view-through match names a click the device made; a fingerprint match also
/// the campaign of its last click; an organic answer is right when the install came from no
/// click).
pub fn by_match_type(outcomes: &[Outcome]) -> Vec<(MatchType, usize, usize)> {
    let types = [
        MatchType::ClickId,
        MatchType::Referrer,
        MatchType::DeviceId,
        MatchType::Fingerprint,
        MatchType::ViewThrough,
        MatchType::Organic,
    ];
    types
        .into_iter()
        .map(|m| {
            let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.match_type == m).collect();
            let right = of
                .iter()
                .filter(|o| match m {
                    MatchType::Organic => o.truth.is_none(),
                    MatchType::Fingerprint => o.own_click && o.campaign == o.truth,
                    _ => o.own_click,
                })
                .count();
            (m, of.len(), right)
        })
        .collect()
}

/// Reliability of the fingerprint confidence: for each tenth of confidence, how many best
/// candidates fell in it and how many of them were the right campaign (the campaign of the
/// device's last click: for an install left organic no click was chosen to compare).
pub fn reliability(outcomes: &[Outcome]) -> Vec<(f64, usize, usize)> {
    let mut bins = vec![(0usize, 0usize); 10];
    for o in outcomes {
        if let Some((c, conf)) = o.best {
            let b = ((conf * 10.0) as usize).min(9);
            bins[b].0 += 1;
            bins[b].1 += (Some(c) == o.truth) as usize;
        }
    }
    bins.into_iter().enumerate().map(|(i, (n, r))| (i as f64 / 10.0, n, r)).collect()
}

/// Fits `right ~ σ(a · logit(share) + b)` over the best fingerprint candidates by Newton's
/// method, the share recovered from the confidence through the engine's calibration: the
/// result is the pair of constants (`CAL_SLOPE`, `CAL_OFFSET`) for these journeys. A candidate
/// counts as right when its campaign is the one of the device's last click.
pub fn fit_calibration(outcomes: &[Outcome]) -> (f64, f64) {
    let data: Vec<(f64, f64)> = outcomes
        .iter()
        .filter_map(|o| o.best.map(|(c, conf)| (conf.clamp(1e-4, 1.0 - 1e-4), (Some(c) == o.truth) as u8 as f64)))
        .map(|(p, y)| (((p / (1.0 - p)).ln() - CAL_OFFSET) / CAL_SLOPE, y))
        .collect();
    let (mut a, mut b) = (1.0f64, 0.0f64);
    for _ in 0..50 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(x, y) in &data {
            let p = 1.0 / (1.0 + (-(a * x + b)).exp());
            let w = p * (1.0 - p);
            ga += (y - p) * x;
            gb += y - p;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        a += (hbb * ga - hab * gb) / det;
        b += (haa * gb - hab * ga) / det;
    }
    (a, b)
}

/// The IANA name of region `zone`.
pub fn zone_name(zone: usize) -> &'static str {
    ZONES[zone % ZONES.len()].0
}
