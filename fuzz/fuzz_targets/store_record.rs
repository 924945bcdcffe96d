//! Stored records (each one version byte, then protobuf) as the daemon reads them back from disk: punches and punch-log
//! values, single punches or blocks (`store::codec`), change-log entries and chunks (`changes`), attendance records (`reconcile::records`) and outbox items. The
//! first byte picks the decoder, the rest is the stored value. Arbitrary bytes decode to a value or an error, never a
//! panic; a decoded value re-encodes to bytes that decode and re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// `encode(decode(bytes))` is a fixed point of decode-then-encode. Compared as bytes: NaN coordinates or scores are kept
/// bit for bit but are not equal to themselves, and unknown fields are dropped by the first decode.
fn stable<T, E: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, E>, encode: impl Fn(&T) -> Vec<u8>) {
    if let Ok(value) = decode(bytes) {
        let once = encode(&value);
        let again = decode(&once).expect("a re-encoded value decodes");
        assert_eq!(encode(&again), once);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, value)) = data.split_first() else { return };
    match which % 6 {
        0 => stable(value, gatewayd::store::codec::decode, gatewayd::store::codec::encode),
        4 => stable(
            value,
            |bytes| gatewayd::store::codec::decode_log_value(u64::from(which), bytes),
            |punches| {
                let encoded: Vec<Vec<u8>> = punches.iter().map(gatewayd::store::codec::encode).collect();
                gatewayd::store::codec::encode_block(&encoded)
            },
        ),
        1 => stable(value, gatewayd::reconcile::changes::decode, gatewayd::reconcile::changes::encode),
        5 => stable(value, gatewayd::reconcile::changes::decode_chunk, |changes| gatewayd::reconcile::changes::encode_chunk(changes)),
        2 => stable(value, gatewayd::reconcile::records::decode, gatewayd::reconcile::records::encode),
        _ => stable(value, gatewayd::outbox::Item::decode, |(item, enqueued)| item.encode(*enqueued)),
    }
});
