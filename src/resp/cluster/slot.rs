//! Hash slots: CRC16 (XMODEM) of the key, or of its hash tag, modulo 16384; and the slot of a
//! command from the positions of its keys.

/// Slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the one Redis Cluster uses.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The part of `key` that is hashed: the text between the first `{` and the first `}` after
/// it when that is not empty, else the whole key (the Redis Cluster specification's rule).
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|b| *b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The slot of a key.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) & (SLOTS as u16 - 1)
}

/// Which arguments of a command are keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keys {
    /// No key (PING, INFO, SCAN, TIME...): any node can answer.
    None,
    /// The first argument only (GET, SET, INCR, EXPIRE, PFADD, ZADD...).
    First,
    /// Every argument (MGET, DEL, PFCOUNT, EXISTS, UNLINK).
    All,
    /// Every other argument, from the first (MSET).
    Pairs,
}

fn keys_of(name: &[u8]) -> Keys {
    const FIRST: &[&[u8]] = &[
        b"GET",
        b"SET",
        b"SETEX",
        b"INCR",
        b"INCRBY",
        b"DECR",
        b"EXPIRE",
        b"EXPIREAT",
        b"PEXPIRE",
        b"TTL",
        b"PTTL",
        b"TYPE",
        b"PFADD",
        b"ZADD",
        b"ZSCORE",
        b"ZRANGE",
        b"ZREM",
        b"ZCARD",
        b"STRLEN",
        b"GETDEL",
        b"PERSIST",
        b"OBJECT",
    ];
    const ALL: &[&[u8]] = &[b"MGET", b"DEL", b"UNLINK", b"EXISTS", b"PFCOUNT", b"TOUCH"];
    if FIRST.iter().any(|c| c.eq_ignore_ascii_case(name)) {
        Keys::First
    } else if ALL.iter().any(|c| c.eq_ignore_ascii_case(name)) {
        Keys::All
    } else if name.eq_ignore_ascii_case(b"MSET") {
        Keys::Pairs
    } else {
        Keys::None
    }
}

/// A command (or pipeline) whose keys hash to more than one slot: never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossSlot {
    pub first: u16,
    pub other: u16,
}

/// The slot of a command: `None` for a keyless one, an error if its keys span slots.
/// `OBJECT <subcommand> <key>` is the one command here whose key is not its first argument.
pub fn command_slot(args: &[&[u8]]) -> Result<Option<u16>, CrossSlot> {
    let Some((name, rest)) = args.split_first() else {
        return Ok(None);
    };
    // (first key's index in `rest`, step between keys, how many keys at most)
    let (skip, step, take) = match keys_of(name) {
        Keys::None => return Ok(None),
        Keys::First if name.eq_ignore_ascii_case(b"OBJECT") => (1, 1, 1),
        Keys::First => (0, 1, 1),
        Keys::All => (0, 1, usize::MAX),
        Keys::Pairs => (0, 2, usize::MAX),
    };
    merge(
        rest.iter()
            .skip(skip)
            .step_by(step)
            .take(take)
            .map(|k| Some(key_slot(k))),
    )
}

/// The one slot of several commands sent together (a pipeline); keyless ones do not count.
pub fn pipeline_slot(cmds: &[&[&[u8]]]) -> Result<Option<u16>, CrossSlot> {
    let mut one = None;
    for c in cmds {
        one = merge([one, command_slot(c)?].into_iter())?;
    }
    Ok(one)
}

fn merge(slots: impl Iterator<Item = Option<u16>>) -> Result<Option<u16>, CrossSlot> {
    let mut one: Option<u16> = None;
    for s in slots.flatten() {
        match one {
            Some(first) if first != s => return Err(CrossSlot { first, other: s }),
            _ => one = Some(s),
        }
    }
    Ok(one)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_compute_crc16_xmodem() {
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn should_apply_hash_tag_rules() {
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // An empty tag: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"{}{bar}"), crc16(b"{}{bar}") % 16384);
        // The tag ends at the first `}` after the first `{`.
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // No closing brace, or one before the opening brace.
        assert_eq!(key_slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
        assert_eq!(key_slot(b"}foo{"), crc16(b"}foo{") % 16384);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"{"), crc16(b"{") % 16384);
    }

    #[test]
    fn should_agree_with_redis_protocol_keyslot() {
        let keys: [&[u8]; 10] = [
            b"foo",
            b"a:{42}:ev:click:2026112517",
            b"{user1000}.following",
            b"foo{}{bar}",
            b"foo{{bar}}zap",
            b"{}{bar}",
            b"foo{bar",
            b"a:runs",
            b"x{y}",
            b"{a}",
        ];
        for k in keys {
            assert_eq!(key_slot(k), redis_protocol::redis_keyslot(k), "{k:?}");
        }
    }

    #[test]
    fn should_find_the_slot_of_a_command() {
        let c = |args: &[&[u8]]| command_slot(args);
        assert_eq!(c(&[b"PING"]), Ok(None));
        assert_eq!(c(&[b"SCAN", b"0"]), Ok(None));
        assert_eq!(c(&[b"get", b"foo"]), Ok(Some(12182)));
        assert_eq!(c(&[b"SET", b"foo", b"bar"]), Ok(Some(12182)));
        assert_eq!(c(&[b"MGET", b"{a}1", b"{a}2"]), Ok(Some(key_slot(b"a"))));
        assert_eq!(
            c(&[b"MGET", b"foo", b"bar"]),
            Err(CrossSlot {
                first: 12182,
                other: 5061
            })
        );
        assert_eq!(
            c(&[b"MSET", b"{a}1", b"foo", b"{a}2", b"bar"]),
            Ok(Some(key_slot(b"a")))
        );
        assert_eq!(c(&[b"OBJECT", b"ENCODING", b"foo"]), Ok(Some(12182)));
        let event: [&[&[u8]]; 4] = [
            &[b"INCR", b"a:{7}:ev:click:1"],
            &[b"PFADD", b"a:{7}:uu:1", b"3"],
            &[b"EXPIREAT", b"a:{7}:ev:click:1", b"9"],
            &[b"PING"],
        ];
        assert_eq!(pipeline_slot(&event), Ok(Some(key_slot(b"7"))));
        let mixed: [&[&[u8]]; 2] = [&[b"GET", b"a:{7}:c:dash"], &[b"GET", b"a:{8}:c:dash"]];
        assert!(pipeline_slot(&mixed).is_err());
    }
}
