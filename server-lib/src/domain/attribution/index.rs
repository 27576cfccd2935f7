//! The in-memory index of recent clicks and impressions ("touches").
//!
//! Touches live in fixed-size chunks in arrival order, so expiry drops whole chunks from the
//! front and memory never doubles the way a growing `Vec` does. Three hash maps point into the
//! chunks by sequence number: click id → touch, device id → newest touch, network prefix (IPv4
//! /24, IPv6 /48) → newest touch. Each touch links to the previous touch with the same device
//! and the same prefix, so "every click from this device in the last 7 days" is a walk down a
//! chain that stops at the first touch outside the window.
//!
//! Strings are kept as keyed 64/32-bit hashes (random key per process): a touch is 88 bytes
//! plus its map entries, and the index never holds a device id in clear.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv6Addr};

use rustc_hash::FxHashMap;

/// Touches per chunk.
pub const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TouchKind {
    Click = 0,
    Impression = 1,
    /// An install seen on an address (no link): the fingerprint step counts the devices an
    /// address is shared by.
    Install = 2,
}

/// Operating system family, the one fingerprint field that disqualifies outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum OsFamily {
    #[default]
    Unknown = 0,
    Ios = 1,
    Android = 2,
    Other = 3,
}

impl OsFamily {
    pub fn of(os: Option<&str>) -> Self {
        match os.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => OsFamily::Unknown,
            Some("ios" | "ipados" | "iphone os") => OsFamily::Ios,
            Some("android") => OsFamily::Android,
            Some(_) => OsFamily::Other,
        }
    }
}

/// Flags of a touch.
pub const FLAG_FLOOD_IP: u8 = 1;
pub const FLAG_FLOOD_DEVICE: u8 = 2;
pub const FLAG_DELETED: u8 = 4;
/// The click's time zone is a GeoIP guess from its address (not reported by the page): a
/// different zone on the install weakens the match instead of ruling it out.
pub const FLAG_TZ_GUESSED: u8 = 8;

/// One click or impression, compact. Hash fields are 0 when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    /// Click id (UUID bytes).
    pub id: [u8; 16],
    /// Client address, IPv4 mapped into IPv6; all zero when unknown.
    pub ip: [u8; 16],
    /// Server time of the touch (Unix ms).
    pub ts: i64,
    /// Keyed hash of the device or advertising id on the touch.
    pub device: u64,
    /// Index of the link in the link table.
    pub link: u32,
    pub os_version: u32,
    pub model: u32,
    pub locale: u32,
    pub timezone: u32,
    pub screen: u32,
    prev_device: u32,
    prev_prefix: u32,
    pub os: OsFamily,
    pub kind: TouchKind,
    pub flags: u8,
}

impl Touch {
    pub fn new(id: uuid::Uuid, kind: TouchKind, ts: i64, link: u32) -> Self {
        Touch {
            id: *id.as_bytes(),
            ip: [0; 16],
            ts,
            device: 0,
            link,
            os_version: 0,
            model: 0,
            locale: 0,
            timezone: 0,
            screen: 0,
            prev_device: 0,
            prev_prefix: 0,
            os: OsFamily::Unknown,
            kind,
            flags: 0,
        }
    }

    pub fn click_id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.id)
    }

    pub fn ip(&self) -> Option<IpAddr> {
        (self.ip != [0; 16]).then(|| {
            let v6 = Ipv6Addr::from(self.ip);
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        })
    }

    pub fn set_ip(&mut self, ip: Option<IpAddr>) {
        self.ip = match ip {
            Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(v6)) => v6.octets(),
            None => [0; 16],
        };
    }
}

/// The network an address belongs to for fingerprinting: IPv4 /24, IPv6 /48.
pub fn prefix_of(ip: &[u8; 16]) -> [u8; 16] {
    let mut p = *ip;
    let v6 = Ipv6Addr::from(*ip);
    let keep = if v6.to_ipv4_mapped().is_some() { 15 } else { 6 };
    p[keep..].fill(0);
    p
}

/// Keyed hashes of strings and addresses, stable for the life of the process.
#[derive(Clone, Default)]
pub struct Hasher(RandomState);

impl Hasher {
    pub fn h64(&self, value: impl Hash) -> u64 {
        self.0.hash_one(value).max(1)
    }
    /// A 32-bit hash of an optional, case-insensitive text; 0 when absent or empty.
    pub fn h32(&self, value: Option<&str>) -> u32 {
        match value.map(str::trim) {
            None | Some("") => 0,
            Some(v) => (self.0.hash_one(v.to_ascii_lowercase()) as u32).max(1),
        }
    }
    /// The hash of a device or advertising id (case-insensitive); 0 for none or the all-zero
    /// id that iOS and Android report when tracking is limited.
    pub fn device(&self, id: Option<&str>) -> u64 {
        match id.map(str::trim) {
            None | Some("") => 0,
            Some(v) if v.chars().all(|c| c == '0' || c == '-') => 0,
            Some(v) => self.h64(v.to_ascii_lowercase()),
        }
    }
}

/// Recent touches with their lookup maps.
pub struct TouchIndex {
    chunks: VecDeque<Vec<Touch>>,
    /// Newest touch time in each chunk.
    chunk_newest: VecDeque<i64>,
    /// Sequence number of `chunks[0][0]`.
    base: u64,
    /// Sequence number the next touch gets.
    next: u64,
    by_id: FxHashMap<u64, u64>,
    by_device: FxHashMap<u64, u64>,
    by_prefix: FxHashMap<u64, u64>,
    pub hasher: Hasher,
    ttl: i64,
    /// Capacity a new chunk starts with (chunks still hold up to [`CHUNK`] touches).
    reserve: usize,
    /// Most touches held; past it the oldest chunk goes.
    cap: usize,
    /// Touches evicted by the cap so far.
    evicted: u64,
}

fn id_key(id: &[u8; 16]) -> u64 {
    u64::from_le_bytes(id[8..].try_into().expect("8 bytes"))
}

impl TouchIndex {
    /// An empty index that keeps touches for `ttl` ms.
    pub fn new(ttl: i64) -> Self {
        Self::with_hasher(ttl, Hasher::default(), CHUNK)
    }

    /// A small index for one decision over touches fetched from a shared cache: `hasher` is the
    /// instance's (so the hashes match its other keys), `reserve` the expected touch count.
    pub fn with_hasher(ttl: i64, hasher: Hasher, reserve: usize) -> Self {
        TouchIndex {
            chunks: VecDeque::new(),
            chunk_newest: VecDeque::new(),
            base: 0,
            next: 0,
            by_id: FxHashMap::default(),
            by_device: FxHashMap::default(),
            by_prefix: FxHashMap::default(),
            hasher,
            ttl,
            reserve: reserve.clamp(1, CHUNK),
            cap: usize::MAX,
            evicted: 0,
        }
    }

    /// Holds at most `cap` touches: a push into a full index first evicts the oldest touches,
    /// a whole chunk (up to [`CHUNK`]) at a time.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self
    }

    /// Touches evicted by the cap so far (expiry not counted).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    pub fn len(&self) -> usize {
        (self.next - self.base) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn prefix_key(&self, ip: &[u8; 16]) -> u64 {
        if *ip == [0; 16] { 0 } else { self.hasher.h64(prefix_of(ip)) }
    }

    fn get(&self, seq: u64) -> Option<&Touch> {
        if seq < self.base || seq >= self.next {
            return None;
        }
        let i = (seq - self.base) as usize;
        self.chunks.get(i / CHUNK).and_then(|c| c.get(i % CHUNK))
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Touch> {
        if seq < self.base || seq >= self.next {
            return None;
        }
        let i = (seq - self.base) as usize;
        self.chunks.get_mut(i / CHUNK).and_then(|c| c.get_mut(i % CHUNK))
    }

    /// Adds a touch (times should arrive in order; they come from one server clock). Returns
    /// how many touches the cap evicted to make room.
    pub fn push(&mut self, mut touch: Touch) -> usize {
        let mut evicted = 0;
        while self.len() >= self.cap && !self.chunks.is_empty() {
            evicted += self.drop_front();
        }
        if evicted > 0 {
            self.shrink_maps();
            self.evicted += evicted as u64;
        }
        let seq = self.next;
        let link = |map: &mut FxHashMap<u64, u64>, key: u64| -> u32 {
            if key == 0 {
                return 0;
            }
            match map.insert(key, seq) {
                Some(prev) => u32::try_from(seq - prev).unwrap_or(0),
                None => 0,
            }
        };
        touch.prev_device = link(&mut self.by_device, touch.device);
        let prefix = self.prefix_key(&touch.ip);
        touch.prev_prefix = link(&mut self.by_prefix, prefix);
        // The same id again (an install noted twice): the older copy goes, so a deletion by
        // that id leaves nothing.
        if let Some(prev) = self.by_id.insert(id_key(&touch.id), seq)
            && let Some(old) = self.get_mut(prev)
            && old.id == touch.id
        {
            old.flags |= FLAG_DELETED;
        }
        if self.chunks.back().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push_back(Vec::with_capacity(self.reserve));
            self.chunk_newest.push_back(i64::MIN);
        }
        let newest = self.chunk_newest.back_mut().expect("a chunk exists");
        *newest = (*newest).max(touch.ts);
        self.chunks.back_mut().expect("a chunk exists").push(touch);
        self.next += 1;
        evicted
    }

    /// Drops the oldest chunk and its map entries; returns its touch count.
    fn drop_front(&mut self) -> usize {
        let Some(chunk) = self.chunks.pop_front() else { return 0 };
        self.chunk_newest.pop_front();
        for (i, touch) in chunk.iter().enumerate() {
            let seq = self.base + i as u64;
            let forget = |map: &mut FxHashMap<u64, u64>, key: u64| {
                if key != 0 && map.get(&key) == Some(&seq) {
                    map.remove(&key);
                }
            };
            forget(&mut self.by_id, id_key(&touch.id));
            forget(&mut self.by_device, touch.device);
            let prefix = self.prefix_key(&touch.ip);
            forget(&mut self.by_prefix, prefix);
        }
        self.base += chunk.len() as u64;
        chunk.len()
    }

    fn shrink_maps(&mut self) {
        self.by_id.shrink_to_fit();
        self.by_device.shrink_to_fit();
        self.by_prefix.shrink_to_fit();
    }

    /// Drops every chunk whose newest touch is older than `now − ttl`.
    pub fn expire(&mut self, now: i64) -> usize {
        let horizon = now.saturating_sub(self.ttl);
        let mut dropped = 0;
        while self.chunk_newest.front().is_some_and(|&t| t < horizon) {
            dropped += self.drop_front();
        }
        if dropped > 0 {
            self.shrink_maps();
        }
        dropped
    }

    /// The touch with this click id, if it is still indexed.
    pub fn by_click_id(&self, id: &uuid::Uuid) -> Option<&Touch> {
        let seq = *self.by_id.get(&id_key(id.as_bytes()))?;
        self.get(seq).filter(|t| t.id == *id.as_bytes() && t.flags & FLAG_DELETED == 0 && t.kind != TouchKind::Install)
    }

    fn walk(&self, start: Option<u64>, since: i64, device_chain: bool) -> impl Iterator<Item = &Touch> + '_ {
        let mut seq = start;
        std::iter::from_fn(move || {
            loop {
                let touch = self.get(seq?)?;
                if touch.ts < since {
                    return None;
                }
                let back = if device_chain { touch.prev_device } else { touch.prev_prefix };
                seq = if back == 0 { None } else { seq.and_then(|s| s.checked_sub(back as u64)) };
                if touch.flags & FLAG_DELETED == 0 {
                    return Some(touch);
                }
            }
        })
    }

    /// Touches carrying the device hash `device`, newest first, back to `since`.
    pub fn by_device(&self, device: u64, since: i64) -> impl Iterator<Item = &Touch> + '_ {
        let start = if device == 0 { None } else { self.by_device.get(&device).copied() };
        self.walk(start, since, true)
    }

    /// Touches from the same network as `ip`, newest first, back to `since`.
    pub fn by_network(&self, ip: Option<IpAddr>, since: i64) -> impl Iterator<Item = &Touch> + '_ {
        let mut probe = Touch::new(uuid::Uuid::nil(), TouchKind::Click, 0, 0);
        probe.set_ip(ip);
        let key = self.prefix_key(&probe.ip);
        let start = if key == 0 { None } else { self.by_prefix.get(&key).copied() };
        self.walk(start, since, false)
    }

    /// Forgets touches (a user's deletion request). Returns how many were found.
    pub fn forget(&mut self, ids: &[uuid::Uuid]) -> usize {
        let mut n = 0;
        for id in ids {
            if let Some(seq) = self.by_id.get(&id_key(id.as_bytes())).copied()
                && let Some(t) = self.get_mut(seq)
                && t.id == *id.as_bytes()
            {
                // The keyed hashes stay until the chunk expires, so expiry can clean the maps.
                t.flags |= FLAG_DELETED;
                self.by_id.remove(&id_key(id.as_bytes()));
                n += 1;
            }
        }
        n
    }

    /// Every live touch with this device hash, regardless of time (for deletions).
    pub fn ids_for_device(&self, device: u64) -> Vec<uuid::Uuid> {
        self.by_device(device, i64::MIN).map(Touch::click_id).collect()
    }

    /// Bytes held by the index: chunks plus hash tables (for metrics and the benchmark).
    pub fn heap_bytes(&self) -> usize {
        let table = |cap: usize| cap * (16 + 1);
        self.chunks.iter().map(|c| c.capacity() * std::mem::size_of::<Touch>()).sum::<usize>()
            + table(self.by_id.capacity())
            + table(self.by_device.capacity())
            + table(self.by_prefix.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(n: u128, ts: i64, device: u64, ip: &str) -> Touch {
        let mut t = Touch::new(uuid::Uuid::from_u128(n), TouchKind::Click, ts, 0);
        t.device = device;
        t.set_ip(Some(ip.parse().unwrap()));
        t
    }

    #[test]
    fn touch_is_compact() {
        assert_eq!(std::mem::size_of::<Touch>(), 88);
    }

    #[test]
    fn chains_and_windows() {
        let mut index = TouchIndex::new(1_000);
        index.push(touch(1, 10, 7, "10.0.0.1"));
        index.push(touch(2, 20, 8, "10.0.0.2"));
        index.push(touch(3, 30, 7, "10.0.1.3"));
        let dev: Vec<_> = index.by_device(7, 0).map(|t| t.ts).collect();
        assert_eq!(dev, vec![30, 10]);
        assert_eq!(index.by_device(7, 15).count(), 1, "stops at the window");
        let net: Vec<_> = index.by_network(Some("10.0.0.200".parse().unwrap()), 0).map(|t| t.ts).collect();
        assert_eq!(net, vec![20, 10]);
        assert_eq!(index.by_click_id(&uuid::Uuid::from_u128(2)).map(|t| t.ts), Some(20));
        assert!(index.by_click_id(&uuid::Uuid::from_u128(9)).is_none());
        assert_eq!(touch(1, 0, 0, "10.1.2.3").ip(), Some("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn expiry_drops_whole_chunks_and_their_keys() {
        let mut index = TouchIndex::new(100);
        for i in 0..(CHUNK as u128 + 10) {
            index.push(touch(i + 1, i as i64 / 1_000, 5, "192.168.1.1"));
        }
        assert_eq!(index.expire(50), 0, "the newest touch of chunk 0 is in the window");
        assert_eq!(index.expire(100_000), CHUNK + 10);
        assert!(index.is_empty());
        assert!(index.by_click_id(&uuid::Uuid::from_u128(1)).is_none());
        assert_eq!(index.by_device(5, i64::MIN).count(), 0);
        index.push(touch(u128::MAX, 200_000, 5, "192.168.1.1"));
        assert_eq!(index.by_device(5, i64::MIN).count(), 1, "old links do not reach dropped chunks");
    }

    #[test]
    fn the_cap_evicts_the_oldest_chunk_first() {
        let cap = 2 * CHUNK;
        let mut index = TouchIndex::new(i64::MAX).with_cap(cap);
        let mut evicted = 0;
        for i in 0..(cap as u128) {
            evicted += index.push(touch(i + 1, 1, (i % 7) as u64 + 1, "192.168.1.1"));
        }
        assert_eq!((index.len(), evicted), (cap, 0), "full, nothing evicted yet");
        evicted += index.push(touch(cap as u128 + 1, 2, 9, "192.168.1.1"));
        assert_eq!(evicted, CHUNK, "the oldest chunk went at once");
        assert_eq!(index.len(), CHUNK + 1);
        assert_eq!(index.evicted(), CHUNK as u64);
        assert!(index.by_click_id(&uuid::Uuid::from_u128(1)).is_none(), "the oldest touch is gone");
        assert!(index.by_click_id(&uuid::Uuid::from_u128(CHUNK as u128 + 1)).is_some(), "the next one stays");
        assert!(index.by_click_id(&uuid::Uuid::from_u128(cap as u128 + 1)).is_some());
        // Device chains stop at the evicted chunk instead of reaching into it.
        assert_eq!(index.by_device(1, i64::MIN).count(), (CHUNK..cap).filter(|i| i % 7 == 0).count());
        // A tiny cap: never more than the cap.
        let mut small = TouchIndex::new(i64::MAX).with_cap(3);
        for i in 0..10u128 {
            small.push(touch(i + 1, 1, 1, "10.0.0.1"));
            assert!(small.len() <= 3);
        }
        assert!(small.by_click_id(&uuid::Uuid::from_u128(10)).is_some());
    }

    #[test]
    fn forgetting_hides_a_touch() {
        let mut index = TouchIndex::new(1_000);
        index.push(touch(1, 10, 7, "10.0.0.1"));
        index.push(touch(2, 20, 7, "10.0.0.1"));
        assert_eq!(index.forget(&[uuid::Uuid::from_u128(2)]), 1);
        assert!(index.by_click_id(&uuid::Uuid::from_u128(2)).is_none());
        let left: Vec<_> = index.by_device(7, 0).map(|t| t.ts).collect();
        assert_eq!(left, vec![10], "the chain still reaches older touches");
    }

    #[test]
    fn limited_ad_ids_are_no_ids() {
        let h = Hasher::default();
        assert_eq!(h.device(Some("00000000-0000-0000-0000-000000000000")), 0);
        assert_eq!(h.device(Some("ABC")), h.device(Some("abc")));
    }
}
