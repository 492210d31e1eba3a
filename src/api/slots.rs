//! The event-stream slots, shared so that no one key or client address can
//! take them all: a key may hold at most a quarter of them, an address at
//! most half (several keys may come from one host, or through one proxy
//! that is not trusted), and the last [`RESERVE`] go only to a key that
//! holds none (an operator opening the dashboard while another key holds
//! many streams).

use super::error::ApiError;
use salvo::http::StatusCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open SSE streams at most (each holds a little memory and a socket).
pub const MAX_STREAMS: usize = 4096;
/// Streams one key may hold at once.
pub const PER_KEY: usize = MAX_STREAMS / 4;
/// Streams one client address may hold at once.
pub const PER_ADDRESS: usize = MAX_STREAMS / 2;
/// The last slots, kept for keys that hold no stream.
pub const RESERVE: usize = 256;

/// Who holds how many slots.
#[derive(Default)]
struct Held {
    total: usize,
    keys: HashMap<[u8; 32], usize>,
    addresses: HashMap<IpAddr, usize>,
}

pub struct StreamSlots {
    held: Mutex<Held>,
    max: usize,
    per_key: usize,
    per_address: usize,
    reserve: usize,
}

impl Default for StreamSlots {
    fn default() -> Self {
        StreamSlots::new(MAX_STREAMS, PER_KEY, PER_ADDRESS, RESERVE)
    }
}

/// One slot, given back when dropped.
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: [u8; 32],
    address: IpAddr,
}

impl StreamSlots {
    /// `max` slots, at most `per_key` for one key and `per_address` for one
    /// address, the last `reserve` only for keys that hold none.
    pub fn new(max: usize, per_key: usize, per_address: usize, reserve: usize) -> StreamSlots {
        StreamSlots {
            held: Mutex::default(),
            max,
            per_key,
            per_address,
            reserve: reserve.min(max),
        }
    }

    /// A slot for a stream of the key with this digest from this address,
    /// or why not: 429 when the key or the address holds its share, 503
    /// when the daemon holds as many streams as it will.
    pub fn take(self: &Arc<Self>, key: [u8; 32], address: IpAddr) -> Result<StreamSlot, ApiError> {
        let mut h = self.lock();
        let of_key = h.keys.get(&key).copied().unwrap_or(0);
        let of_address = h.addresses.get(&address).copied().unwrap_or(0);
        if of_key >= self.per_key {
            return Err(too_many(format!(
                "this key holds {of_key} event streams, as many as one key may; close some first"
            )));
        }
        if of_address >= self.per_address {
            return Err(too_many(format!(
                "this address holds {of_address} event streams, as many as one address may; close some first"
            )));
        }
        let limit = if of_key == 0 {
            self.max
        } else {
            self.max - self.reserve
        };
        if h.total >= limit {
            return Err(ApiError::unavailable(
                "too many open event streams; try again later",
            ));
        }
        h.total += 1;
        *h.keys.entry(key).or_default() += 1;
        *h.addresses.entry(address).or_default() += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            key,
            address,
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn too_many(message: String) -> ApiError {
    ApiError {
        retry_after: Some(10),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut h = self.slots.lock();
        h.total -= 1;
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
            if let Some(n) = map.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    map.remove(k);
                }
            }
        }
        release(&mut h.keys, &self.key);
        release(&mut h.addresses, &self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_or_address_takes_every_slot_and_a_key_with_none_gets_the_reserve() {
        let slots = Arc::new(StreamSlots::new(10, 4, 5, 2));
        let here = IpAddr::from([127, 0, 0, 1]);
        let there = IpAddr::from([10, 0, 0, 1]);
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(slots.take([1; 32], here).unwrap());
        }
        // The key holds its share, from any address.
        let e = slots.take([1; 32], there).err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (429, "too_many_streams"));
        assert_eq!(e.retry_after, Some(10));
        // The address holds its share, for any key.
        held.push(slots.take([2; 32], here).unwrap());
        let e = slots.take([3; 32], here).err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (429, "too_many_streams"));
        // Up to the reserve: 8 of 10.
        for k in [2, 2, 7] {
            held.push(slots.take([k; 32], there).unwrap());
        }
        assert_eq!(slots.open(), 8);
        // A key that holds some is refused the reserve; one with none gets it.
        let e = slots.take([2; 32], IpAddr::from([10, 9, 9, 9])).err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "unavailable"));
        held.push(slots.take([4; 32], there).unwrap());
        held.push(slots.take([5; 32], there).unwrap());
        let e = slots.take([6; 32], IpAddr::from([10, 9, 9, 9])).err().unwrap();
        assert_eq!(e.status.as_u16(), 503, "full");
        drop(held);
        assert_eq!(slots.open(), 0);
        assert!(slots.lock().keys.is_empty() && slots.lock().addresses.is_empty());
    }
}
