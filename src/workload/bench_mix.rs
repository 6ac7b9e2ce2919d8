//! The command mix of `bench-redis`: the SET:GET ratio, how keys are picked, and the key
//! buffer each worker reuses so the per-command path formats keys without allocating.
//!
//! Keys are `key:` plus 12 zero-padded digits, exactly what `redis-benchmark -r N` sends,
//! so both tools put the same bytes on the wire and the comparison is like for like.

use std::fmt;

use crate::workload::{Rng, Skewed, Weighted};

/// Largest key space: 12 digits, as in redis-benchmark's `__rand_int__`.
pub const MAX_KEYS: u64 = 1_000_000_000_000;

/// Zipf keeps a cumulative table of 8 bytes per key per shard: cap it at 80 MB.
pub const MAX_ZIPF_KEYS: u64 = 10_000_000;

/// Largest weight of one side of the ratio (keeps the weighted pick exact in u64).
const MAX_WEIGHT: u32 = 1_000_000;

/// One command of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
}

/// `--ratio set:get`, as in memtier_benchmark: relative weights, not both 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub set: u32,
    pub get: u32,
}

impl Ratio {
    /// Parses `S:G`; `Err` completes the sentence "expected ...".
    pub fn parse(text: &str) -> Result<Ratio, String> {
        const SHAPE: &str = "SET:GET as two whole numbers such as 1:10";
        let (s, g) = text.trim().split_once(':').ok_or(SHAPE)?;
        let side = |t: &str| -> Result<u32, String> {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SHAPE.to_string());
            }
            match t.parse::<u32>() {
                Ok(v) if v <= MAX_WEIGHT => Ok(v),
                _ => Err(format!("each side at most {MAX_WEIGHT}")),
            }
        };
        let ratio = Ratio {
            set: side(s)?,
            get: side(g)?,
        };
        if ratio.set == 0 && ratio.get == 0 {
            return Err("at least one side above 0 (0:0 sends nothing)".to_string());
        }
        Ok(ratio)
    }

    /// The weighted pick over SET and GET.
    pub fn weighted(&self) -> Weighted<Op> {
        Weighted::new(&[(Op::Set, self.set), (Op::Get, self.get)])
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.set, self.get)
    }
}

/// `--key-pattern`: how a key index is drawn from the key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPattern {
    Uniform,
    /// Skewed by `--zipf-exponent`; index 0 is the hottest key.
    Zipf,
}

impl KeyPattern {
    /// The accepted spellings, for the option resolver.
    pub const CHOICES: [(&'static str, KeyPattern); 2] =
        [("uniform", KeyPattern::Uniform), ("zipf", KeyPattern::Zipf)];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyPattern::Uniform => "uniform",
            KeyPattern::Zipf => "zipf",
        }
    }

    /// The sampler for `keys` keys.
    pub fn sampler(self, keys: u64, exponent: f64) -> Skewed {
        match self {
            KeyPattern::Uniform => Skewed::uniform(keys),
            KeyPattern::Zipf => Skewed::zipf(keys.min(MAX_ZIPF_KEYS) as usize, exponent),
        }
    }
}

/// Everything a shard draws per command: which command, which key.
pub struct Mix {
    ops: Weighted<Op>,
    keys: Skewed,
}

impl Mix {
    pub fn new(ratio: Ratio, pattern: KeyPattern, keys: u64, exponent: f64) -> Mix {
        Mix {
            ops: ratio.weighted(),
            keys: pattern.sampler(keys, exponent),
        }
    }

    pub fn next(&self, rng: &mut Rng) -> (Op, u64) {
        (self.ops.sample(rng), self.keys.sample(rng))
    }
}

const KEY_PREFIX: &[u8] = b"key:";
const KEY_DIGITS: usize = 12;

/// A reusable `key:NNNNNNNNNNNN` buffer (`key:{TAG}:NNNNNNNNNNNN` in cluster mode, as
/// redis-benchmark --cluster tags its keys): `set` rewrites the digits in place.
#[derive(Clone)]
pub struct KeyBuf(Vec<u8>);

impl Default for KeyBuf {
    fn default() -> Self {
        KeyBuf::tagged(None)
    }
}

impl KeyBuf {
    /// Keys with the hash tag `{tag}` (all in the tag's cluster slot), or untagged.
    pub fn tagged(tag: Option<&str>) -> KeyBuf {
        let mut b = KEY_PREFIX.to_vec();
        if let Some(t) = tag {
            b.extend_from_slice(format!("{{{t}}}:").as_bytes());
        }
        b.extend_from_slice(&[b'0'; KEY_DIGITS]);
        KeyBuf(b)
    }

    /// Writes `index` (below [`MAX_KEYS`]; higher digits are dropped) and returns the key.
    pub fn set(&mut self, index: u64) -> &[u8] {
        let mut v = index;
        let digits = self.0.len() - KEY_DIGITS;
        let mut d = self.0[digits..].iter_mut().rev();
        // Only the significant digits are computed; the leading ones are zeros.
        for b in d.by_ref() {
            *b = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        d.for_each(|b| *b = b'0');
        &self.0
    }

    /// The key last written.
    pub fn get(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_ratios() {
        assert_eq!(Ratio::parse("1:10"), Ok(Ratio { set: 1, get: 10 }));
        assert_eq!(Ratio::parse(" 0:1 "), Ok(Ratio { set: 0, get: 1 }));
        assert_eq!(Ratio::parse("3:0"), Ok(Ratio { set: 3, get: 0 }));
        assert_eq!(Ratio::parse("1000000:1").map(|r| r.set), Ok(1_000_000));
        assert_eq!(Ratio { set: 2, get: 7 }.to_string(), "2:7");
    }

    #[test]
    fn should_reject_malformed_ratios_with_the_reason() {
        for bad in [
            "", "1", "1:", ":1", "a:b", "1:2:3", "-1:2", "+1:2", "1.5:2", "1 :2",
        ] {
            let e = Ratio::parse(bad).unwrap_err();
            assert!(e.contains("two whole numbers"), "{bad:?}: {e}");
        }
        assert!(Ratio::parse("0:0")
            .unwrap_err()
            .contains("at least one side"));
        assert!(Ratio::parse("1000001:1")
            .unwrap_err()
            .contains("at most 1000000"));
        assert!(Ratio::parse("99999999999:1")
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn should_pick_commands_in_the_ratio() {
        let w = Ratio { set: 1, get: 3 }.weighted();
        let mut rng = Rng::new(7);
        let sets = (0..40_000)
            .filter(|_| w.sample(&mut rng) == Op::Set)
            .count();
        assert!((9_000..11_000).contains(&sets), "{sets}");
        let only_get = Ratio { set: 0, get: 1 }.weighted();
        assert!((0..1000).all(|_| only_get.sample(&mut rng) == Op::Get));
    }

    #[test]
    fn should_draw_keys_by_pattern() {
        let mut rng = Rng::new(1);
        let uniform = KeyPattern::Uniform.sampler(1000, 1.0);
        let zipf = KeyPattern::Zipf.sampler(1000, 1.0);
        let hot = |s: &Skewed, rng: &mut Rng| (0..10_000).filter(|_| s.sample(rng) == 0).count();
        // Zipf(1) over 1000 keys gives key 0 about 13% of draws; uniform 0.1%.
        assert!(hot(&zipf, &mut rng) > 1000);
        assert!(hot(&uniform, &mut rng) < 100);
        assert!((0..1000).all(|_| zipf.sample(&mut rng) < 1000));
        assert_eq!(KeyPattern::Zipf.sampler(u64::MAX, 1.0).len(), MAX_ZIPF_KEYS);
    }

    #[test]
    fn should_format_keys_like_redis_benchmark() {
        let mut k = KeyBuf::default();
        assert_eq!(k.set(0), b"key:000000000000");
        assert_eq!(k.set(42), b"key:000000000042");
        assert_eq!(k.set(MAX_KEYS - 1), b"key:999999999999");
        assert_eq!(k.set(7), b"key:000000000007");
    }
}
