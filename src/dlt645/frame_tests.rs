//! Golden frames, each with where it came from and its checksum worked by hand, and properties
//! of the decoder.

use proptest::prelude::*;

use super::*;
use crate::dlt645::format::Format;
use crate::model::Value;

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn decode_one(bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut d = Decoder::new();
    d.extend(bytes);
    let frame = d.next_frame().expect("a complete frame");
    assert_eq!(d.buffered(), 0, "nothing left over");
    frame
}

/// The worked example of the DL/T 645 notes at https://m.icode9.com/content-4-712469.html
/// ("DL645通信协议97/07规约(附上下行例子)"): meter 000102030425 is asked for total forward
/// active energy (DI 00010000) and answers 001206.42 kWh.
///
/// Request checksum: 68+25+04+03+02+01+00+68 = FFh; + 11 + 04 = 114h; plus the DI
/// 33+33+34+33 (CDh) = 1E1h → E1.
/// Reply checksum: FFh + 91 + 08 = 198h; + CDh (the DI) = 265h; + 75+39+45+33 (126h) = 38Bh → 8B.
/// Value: 75 39 45 33 − 33h each = 42 06 12 00, lowest byte first → 00 12 06 42 → 001206.42.
#[test]
fn golden_2007_energy_read_from_a_published_example() {
    let address = Address::parse("000102030425").expect("valid address");
    assert_eq!(address.0, [0x25, 0x04, 0x03, 0x02, 0x01, 0x00]);
    let request = read_request(address, DataId::V2007(0x0001_0000));
    assert_eq!(
        request,
        hex("FE FE FE FE 68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16")
    );

    let reply = decode_one(&hex(
        "68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16",
    ))
    .expect("checksum is right");
    assert_eq!(reply.address, address);
    let Ok(Reply::Data { di, value, more }) = interpret(Edition::Dlt2007, &reply) else {
        panic!("a data reply: {reply:?}");
    };
    assert_eq!(di, DataId::V2007(0x0001_0000));
    assert!(!more);
    let format: Format = "XXXXXX.XX".parse().expect("format");
    assert_eq!(format.decode(&value), Ok(Value::Float(1206.42)));
}

/// The address read of the same notes (icode9, point 5): `FE FE FE 68 AA AA AA AA AA AA 68 13
/// 00 DF 16`. We send four wake-up bytes where the example sends three; the frame is the same.
/// Checksum: 68 + 6 × AA (3FCh) + 68 + 13 + 00 = 4DFh → DF.
#[test]
fn golden_broadcast_address_read() {
    let request = address_request();
    assert_eq!(request[..4], [0xFE; 4]);
    assert_eq!(request[4..], hex("68 AA AA AA AA AA AA 68 13 00 DF 16")[..]);
}

/// A meter's answer to the address read, from a public frame-format note (the KYGK
/// repository's `upload/202305/…帧格式.txt` at 101.42.41.254:3000): `FE FE FE FE 68 04 60 07 00
/// 15 00 68 93 06 37 93 3A 33 48 33 9B 16`.
/// Checksum: 68+04+60+07+00+15+00+68 = 150h; + 93 + 06 = 1E9h; + 37+93+3A+33+48+33 (1B2h)
/// = 39Bh → 9B. Data − 33h = 04 60 07 00 15 00: the address itself, 001500076004.
#[test]
fn golden_address_reply_with_wake_up_bytes() {
    let reply = decode_one(&hex(
        "FE FE FE FE 68 04 60 07 00 15 00 68 93 06 37 93 3A 33 48 33 9B 16",
    ))
    .expect("checksum is right");
    let expected = Address::parse("1500076004").expect("valid address");
    assert_eq!(reply.address, expected);
    assert_eq!(reply.address.to_string(), "001500076004");
    assert_eq!(
        interpret(Edition::Dlt2007, &reply),
        Ok(Reply::Address(expected))
    );
    assert_eq!(
        address_reply(expected).encode(4),
        hex("FE FE FE FE 68 04 60 07 00 15 00 68 93 06 37 93 3A 33 48 33 9B 16")
    );
}

/// An A-phase voltage read (DI 02010100) from a public packet-analysis note titled
/// "DLT645-2007报文解析" (meter 000000000161): request `… 68 11 04 33 34 34 35 17 16`, reply
/// `68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16` ("A相电压为:100.1 V").
/// Request checksum: 68+61+01+00+00+00+00+68 = 132h; + 11 + 04 = 147h; + 33+34+34+35 (D0h)
/// = 217h → 17.
/// Reply checksum: 132h + 91 + 06 = 1C9h; + D0h = 299h; + 34 + 43 = 310h → 10.
/// Value: 34 43 − 33h = 01 10 → digits 1001 → XXX.X = 100.1 V.
#[test]
fn golden_2007_voltage_read() {
    let address = Address::parse("161").expect("valid address");
    assert_eq!(
        read_request(address, DataId::V2007(0x0201_0100))[4..],
        hex("68 61 01 00 00 00 00 68 11 04 33 34 34 35 17 16")[..]
    );
    let reply = decode_one(&hex(
        "68 61 01 00 00 00 00 68 91 06 33 34 34 35 34 43 10 16",
    ))
    .expect("checksum is right");
    let Ok(Reply::Data { di, value, .. }) = interpret(Edition::Dlt2007, &reply) else {
        panic!("a data reply");
    };
    assert_eq!(di.to_string(), "02010100");
    let format: Format = "XXX.X".parse().expect("format");
    assert_eq!(format.decode(&value), Ok(Value::Float(100.1)));
}

/// A 1997 voltage read (DI B611) from the Heyuan ASDU-LS manual's DL/645-1997 configuration
/// page (https://manualshive.com/en/manual/heyuan-intelligence/asdu-ls/2128413?page=18):
/// request `68 03 00 00 00 00 00 68 01 02 44 E9 03 16`, reply `… 68 81 04 44 E9 33 34 EC 16`,
/// "Data Domain: 0100V".
/// Request checksum: 68+03+68 = D3h; + 01 + 02 = D6h; + 44 + E9 = 203h → 03.
/// Reply checksum: D3h + 81 + 04 = 158h; + 44 + E9 = 285h; + 33 + 34 = 2ECh → EC.
/// Value: 33 34 − 33h = 00 01, lowest byte first → 0100 → 100 V (the 1997 format `XXX`).
#[test]
fn golden_1997_voltage_read_from_a_manual() {
    let address = Address::parse("3").expect("valid address");
    let request = read_request(address, DataId::V1997(0xB611));
    assert_eq!(
        request[4..],
        hex("68 03 00 00 00 00 00 68 01 02 44 E9 03 16")[..]
    );
    let reply = decode_one(&hex("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"))
        .expect("checksum is right");
    let Ok(Reply::Data { di, value, .. }) = interpret(Edition::Dlt1997, &reply) else {
        panic!("a data reply");
    };
    assert_eq!(di, DataId::V1997(0xB611));
    let format: Format = "XXX".parse().expect("format");
    assert_eq!(format.decode(&value), Ok(Value::UInt(100)));
}

/// A 1997 energy read (DI 9010) published at https://kaledl.com/down/1493168.html for meter
/// RS3430163: `68 63 01 43 03 00 00 68 01 02 43 C3 83 16`; the answer printed beside it comes
/// from another meter (`68 54 07 13 00 80 13 68 81 06 43 C3 34 33 33 33 2B 16`), which is
/// what a reply from the wrong meter looks like: its checksum is right, its address is not
/// the one asked.
/// Request checksum: 68+63+01+43+03+00+00+68 = 17Ah; + 01 + 02 = 17Dh; + 43 + C3 = 283h → 83.
/// Reply checksum: 68+54+07+13+00+80+13+68 = 1D1h; + 81 + 06 = 258h; + 43 + C3 = 35Eh; plus
/// 34+33+33+33 (CDh) = 42Bh → 2B. Value: 34 33 33 33 − 33h = 01 00 00 00 → 000000.01 kWh.
#[test]
fn golden_1997_energy_read_and_a_reply_from_another_meter() {
    let asked = Address::parse("3430163").expect("valid address");
    assert_eq!(
        read_request(asked, DataId::V1997(0x9010))[4..],
        hex("68 63 01 43 03 00 00 68 01 02 43 C3 83 16")[..]
    );
    let reply = decode_one(&hex(
        "68 54 07 13 00 80 13 68 81 06 43 C3 34 33 33 33 2B 16",
    ))
    .expect("checksum is right");
    assert_ne!(reply.address, asked);
    assert_eq!(reply.address.to_string(), "138000130754");
    let Ok(Reply::Data { value, .. }) = interpret(Edition::Dlt1997, &reply) else {
        panic!("a data reply");
    };
    let format: Format = "XXXXXX.XX".parse().expect("format");
    assert_eq!(format.decode(&value), Ok(Value::Float(0.01)));
}

/// An abnormal reply built from the frame layout (no published capture found): meter
/// 000102030425 refuses with 2007 error word 02h, "no requested data".
/// `68 25 04 03 02 01 00 68 D1 01 35 06 16`: checksum FFh + D1 + 01 = 1D1h; + 35 = 206h → 06.
#[test]
fn error_reply_maps_its_word_to_a_quality() {
    let address = Address::parse("000102030425").expect("valid address");
    let bytes = hex("68 25 04 03 02 01 00 68 D1 01 35 06 16");
    assert_eq!(
        error_reply(address, Edition::Dlt2007, 0x02).encode(0),
        bytes
    );
    let frame = decode_one(&bytes).expect("checksum is right");
    let Ok(Reply::Error(word)) = interpret(Edition::Dlt2007, &frame) else {
        panic!("an error reply");
    };
    assert_eq!(word.reasons(), ["no requested data"]);
    assert_eq!(word.quality(), Quality::DeviceException);
    assert_eq!(word.to_string(), "error word 02h (no requested data)");
    // 1997: C1h, and bit 1 means a wrong data identifier.
    let old = error_reply(address, Edition::Dlt1997, 0x02);
    assert_eq!(old.control, 0xC1);
    let Ok(Reply::Error(word)) = interpret(Edition::Dlt1997, &old) else {
        panic!("an error reply");
    };
    assert_eq!(word.reasons(), ["data identifier wrong"]);
}

#[test]
fn follow_up_frames_are_flagged_and_requested() {
    let address = Address::parse("1").expect("valid address");
    let di = DataId::V2007(0x0001_FF00);
    let frame = data_reply(address, di, &[0x00, 0x01, 0x00, 0x00], true);
    assert_eq!(frame.control, 0xB1);
    let Ok(Reply::Data { more, .. }) = interpret(Edition::Dlt2007, &frame) else {
        panic!("a data reply");
    };
    assert!(more);
    // 2007 asks for frame `seq` with 12h, DI and sequence number; 1997 with 02h and the DI.
    let next = follow_up_request(address, di, 1);
    assert_eq!(next[4 + 8], 0x12);
    assert_eq!(next[4 + 9], 5);
    assert_eq!(next[4 + 14], 1 + DATA_OFFSET);
    let old = follow_up_request(address, DataId::V1997(0x901F), 1);
    assert_eq!((old[4 + 8], old[4 + 9]), (0x02, 2));
    assert_eq!(
        data_reply(address, DataId::V1997(0x901F), &[], true).control,
        0xA1
    );
}

#[test]
fn a_bad_checksum_is_reported_and_the_stream_goes_on() {
    let good = hex("68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16");
    let mut bad = good.clone();
    bad[18] = 0x8C;
    let mut d = Decoder::new();
    // Line noise, a frame with a wrong checksum, wake-up bytes, then a good frame.
    d.extend(&[0x00, 0x16, 0x68, 0x13]);
    d.extend(&bad);
    d.extend(&[0xFE, 0xFE]);
    d.extend(&good);
    assert!(matches!(
        d.next_frame(),
        Some(Err(FrameError::Checksum {
            got: 0x8C,
            computed: 0x8B,
            ..
        }))
    ));
    assert!(matches!(d.next_frame(), Some(Ok(f)) if f.control == 0x91));
    assert_eq!(d.next_frame(), None);
}

#[test]
fn a_frame_split_across_reads_waits_for_its_end() {
    let good = hex("FE FE 68 25 04 03 02 01 00 68 91 08 33 33 34 33 75 39 45 33 8B 16");
    let mut d = Decoder::new();
    for chunk in good.chunks(3) {
        assert_eq!(d.next_frame(), None);
        d.extend(chunk);
    }
    assert!(matches!(d.next_frame(), Some(Ok(_))));
}

#[test]
fn requests_on_the_line_are_not_replies() {
    let echo = hex("68 25 04 03 02 01 00 68 11 04 33 33 34 33 E1 16");
    let frame = decode_one(&echo).expect("checksum is right");
    assert_eq!(
        interpret(Edition::Dlt2007, &frame),
        Err(ReplyError::NotAReply(0x11))
    );
    // A 1997 reply read as 2007 is not a read reply.
    let old = data_reply(Address::ANY, DataId::V1997(0x9010), &[0; 4], false);
    assert_eq!(
        interpret(Edition::Dlt2007, &old),
        Err(ReplyError::UnexpectedControl(0x81))
    );
}

#[test]
fn addresses_parse_print_and_step() {
    let a = Address::parse("000003430163").expect("valid");
    assert_eq!(a.0, [0x63, 0x01, 0x43, 0x03, 0x00, 0x00]);
    assert_eq!(a.number(), Some(3_430_163));
    assert_eq!(
        a.offset(7).map(|a| a.to_string()),
        Some("000003430170".into())
    );
    assert_eq!(Address::ANY.to_string(), "aaaaaaaaaaaa");
    assert_eq!(Address::ANY.number(), None);
    for bad in ["", "1234567890123", "12a"] {
        assert!(Address::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        DataId::parse(Edition::Dlt2007, "00.01.00.00"),
        Ok(DataId::V2007(0x0001_0000))
    );
    assert!(DataId::parse(Edition::Dlt1997, "00010000").is_err());
}

fn address() -> impl Strategy<Value = Address> {
    any::<[u8; 6]>().prop_map(Address)
}

proptest! {
    /// No byte sequence, fed in any chunking, panics the decoder or the interpreter, and
    /// whatever it yields has the shape of a frame.
    #[test]
    fn no_byte_sequence_panics_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        cut in 1usize..64,
    ) {
        let mut d = Decoder::new();
        for chunk in bytes.chunks(cut) {
            d.extend(chunk);
            while let Some(frame) = d.next_frame() {
                if let Ok(frame) = frame {
                    prop_assert!(frame.data.len() <= 255);
                    let _ = interpret(Edition::Dlt2007, &frame);
                    let _ = interpret(Edition::Dlt1997, &frame);
                }
            }
        }
    }

    /// Frames survive encode → decode whole, behind any noise that holds no start byte.
    #[test]
    fn encode_then_decode_round_trips(
        address in address(),
        control in any::<u8>(),
        data in proptest::collection::vec(any::<u8>(), 0..=255),
        wake_up in 0usize..5,
        noise in proptest::collection::vec(any::<u8>().prop_filter("no start byte", |b| *b != START), 0..20),
    ) {
        let frame = Frame { address, control, data };
        let mut d = Decoder::new();
        d.extend(&noise);
        d.extend(&frame.encode(wake_up));
        prop_assert_eq!(d.next_frame(), Some(Ok(frame)));
        prop_assert_eq!(d.next_frame(), None);
    }

    /// Read replies round-trip through interpret for both editions.
    #[test]
    fn data_replies_round_trip(
        address in address(),
        di in any::<u32>(),
        value in proptest::collection::vec(any::<u8>(), 0..200),
        more in any::<bool>(),
        old in any::<bool>(),
    ) {
        let (edition, di) = if old {
            (Edition::Dlt1997, DataId::V1997(di as u16))
        } else {
            (Edition::Dlt2007, DataId::V2007(di))
        };
        let bytes = data_reply(address, di, &value, more).encode(4);
        let frame = decode_one(&bytes).expect("checksum is right");
        prop_assert_eq!(frame.address, address);
        prop_assert_eq!(interpret(edition, &frame), Ok(Reply::Data { di, value, more }));
    }

    /// BCD formats round-trip every value they can hold.
    #[test]
    fn bcd_values_round_trip(n in 0u64..100_000_000, negative in any::<bool>()) {
        let unsigned: Format = "XXXXXX.XX".parse().expect("format");
        let bytes = unsigned.encode(n as f64 / 100.0).expect("fits");
        prop_assert_eq!(unsigned.decode(&bytes), Ok(Value::Float(n as f64 / 100.0)));
        let signed: Format = "sXX.XXXX".parse().expect("format");
        let m = (n % 800_000) as f64 / 10_000.0;
        let m = if negative { -m } else { m };
        let bytes = signed.encode(m).expect("fits");
        let Ok(Value::Float(back)) = signed.decode(&bytes) else { panic!("decodes") };
        prop_assert!((back - m).abs() < 1e-9, "{} -> {}", m, back);
    }
}
