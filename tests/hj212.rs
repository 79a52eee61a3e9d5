//! HJ 212 codec: the worked vectors of HJ 212-2017 (§6, Appendix A), golden packets, every rejection with its
//! QnRtn, splitting over PNUM/PNO, round trips and a bounded fuzz over arbitrary and mutated bytes.

// A test here reads as one scenario, from what it starts to its last assertion; split, the
// scenario would be scattered over helpers that each hold a part of it.
#![allow(clippy::too_many_lines)]

mod common;

use std::sync::Arc;

use common::hj212::station;
use common::records::stack_aggregate;
use proptest::prelude::*;
use smeltwatch::codec::hj212::{
    self, Cp, EncodeError, Packet, ParseError, ParseOptions, RtdValue, Scan, Table, qn_rtn,
};
use smeltwatch::model::{Aggregate, Period, Quality, Timestamp};

const HOURLY_2061: &[u8] = include_bytes!("testdata/hj212/hourly_2061.txt");
const REALTIME_2011: &[u8] = include_bytes!("testdata/hj212/realtime_2011.txt");
const DATA_RESPONSE_9014: &[u8] = include_bytes!("testdata/hj212/data_response_9014.txt");
const STANDARD_1062: &[u8] = include_bytes!("testdata/hj212/standard_example_1062.txt");
const LAMPBLACK_2051: &[u8] = include_bytes!("testdata/hj212/minute_2051_lampblack.txt");

/// 2025-03-01 10:00:00.000 China time.
const T_1000_CST: Timestamp = Timestamp(1_740_794_400_000);
/// 2025-03-01 09:00:00.000 China time.
const T_0900_CST: Timestamp = Timestamp(1_740_790_800_000);

fn table() -> Table {
    Table::hj212_2017()
}

fn opts() -> ParseOptions {
    ParseOptions::default()
}

/// CRC-16/MODBUS, the algorithm the standard's CRC is often mistaken for.
fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The data segment of a framed packet and its printed CRC.
fn segment_and_crc(packet: &[u8]) -> (&[u8], u16) {
    let n = packet.len();
    let crc = std::str::from_utf8(&packet[n - 6..n - 2]).unwrap();
    (&packet[6..n - 6], u16::from_str_radix(crc, 16).unwrap())
}

fn agg(quantity: &str, avg: f64, min: f64, max: f64, total: f64) -> Aggregate {
    Aggregate {
        min: Some(min),
        max: Some(max),
        total: Some(total),
        total_unit: Some(Arc::from("kg")),
        ..stack_aggregate(
            quantity,
            Period::Hour,
            T_0900_CST.0,
            T_0900_CST.0 + 3_600_000,
            avg,
            0.0,
        )
    }
}

fn worked_example_4() -> Vec<Aggregate> {
    vec![
        agg("particulate_mg_m3", 4.2, 3.1, 5.6, 6.72),
        agg("so2_mg_m3", 85.3, 70.2, 99.8, 136.48),
        agg("fluoride_mg_m3", 0.85, 0.60, 1.10, 1.36),
        agg("flow_m3_s", 444.44, 430.0, 455.0, 1_600_000.0),
    ]
}

#[test]
fn crc_of_every_worked_vector_matches_and_modbus_does_not() {
    let vectors: [(&[u8], usize, u16); 5] = [
        (STANDARD_1062, 101, 0x1C80),
        (LAMPBLACK_2051, 137, 0x9B81),
        (HOURLY_2061, 435, 0xD581),
        (REALTIME_2011, 199, 0x1100),
        (DATA_RESPONSE_9014, 87, 0x0780),
    ];
    for (packet, len, crc) in vectors {
        let (segment, printed) = segment_and_crc(packet);
        assert_eq!(segment.len(), len);
        assert_eq!(printed, crc);
        assert_eq!(
            hj212::crc16(segment),
            crc,
            "{}",
            String::from_utf8_lossy(segment)
        );
        assert_ne!(
            crc16_modbus(segment),
            crc,
            "MODBUS must not pass the vector"
        );
    }
    // The standard's own example: MODBUS gives 0759 (Appendix A).
    assert_eq!(crc16_modbus(segment_and_crc(STANDARD_1062).0), 0x0759);
    // And our MODBUS reference is the real one (its catalogue check value).
    assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
}

#[test]
fn a_packet_published_with_a_wrong_crc_is_rejected() {
    // Appendix A: a packet seen in a repository ends in 0137 but its segment computes to 71C0.
    let mut bad = LAMPBLACK_2051.to_vec();
    let n = bad.len();
    bad[n - 6..n - 2].copy_from_slice(b"0137");
    let err = hj212::parse(&bad, &table(), &opts()).unwrap_err();
    assert!(matches!(
        err,
        ParseError::Crc {
            received: 0x0137,
            computed: 0x9B81
        }
    ));
    assert_eq!(err.qn_rtn(), 9);
}

#[test]
fn frame_prints_length_crc_and_crlf() {
    let seg = std::str::from_utf8(segment_and_crc(STANDARD_1062).0).unwrap();
    assert_eq!(hj212::frame(seg).unwrap().as_bytes(), STANDARD_1062);
}

#[test]
fn hourly_packet_of_worked_example_4_is_byte_exact() {
    let packets =
        hj212::encode_window(&table(), &station(true), T_1000_CST, &worked_example_4()).unwrap();
    assert_eq!(packets.len(), 1);
    assert_eq!(
        packets[0].as_bytes(),
        HOURLY_2061,
        "\n{}\n{}",
        packets[0],
        String::from_utf8_lossy(HOURLY_2061)
    );
}

#[test]
fn realtime_packet_of_section_7_5_is_byte_exact() {
    let values = [
        RtdValue {
            quantity: "particulate_mg_m3",
            value: Some(4.1),
            quality: Quality::Good,
        },
        RtdValue {
            quantity: "so2_mg_m3",
            value: Some(88.0),
            quality: Quality::Good,
        },
        RtdValue {
            quantity: "a21018",
            value: Some(0.9),
            quality: Quality::Good,
        },
    ];
    let packets = hj212::encode_realtime(
        &table(),
        &station(false),
        Timestamp(T_1000_CST.0 + 123),
        T_1000_CST,
        &values,
    )
    .unwrap();
    assert_eq!(
        packets,
        vec![String::from_utf8(REALTIME_2011.to_vec()).unwrap()]
    );
}

#[test]
fn data_response_answers_the_realtime_packet_byte_exact() {
    let request = hj212::parse(REALTIME_2011, &table(), &opts()).unwrap();
    let ack = hj212::data_response(&table(), &request).unwrap();
    assert_eq!(ack.as_bytes(), DATA_RESPONSE_9014);
    let parsed = hj212::parse(ack.as_bytes(), &table(), &opts()).unwrap();
    assert_eq!(parsed.cn, 9014);
    assert_eq!(parsed.st, 91);
    assert_eq!(parsed.qn, request.qn);
    assert!(parsed.cp.0.is_empty());
}

#[test]
fn every_worked_packet_parses_and_reprints_identically() {
    for packet in [
        STANDARD_1062,
        LAMPBLACK_2051,
        HOURLY_2061,
        REALTIME_2011,
        DATA_RESPONSE_9014,
    ] {
        let p = hj212::parse(packet, &table(), &opts()).unwrap();
        assert_eq!(p.encode().unwrap().as_bytes(), packet);
    }
    let p = hj212::parse(HOURLY_2061, &table(), &opts()).unwrap();
    assert_eq!(p.qn.as_deref(), Some("20250301100000000"));
    assert_eq!((p.st, p.cn, p.flag), (31, 2061, 5));
    assert!(p.wants_ack());
    assert_eq!(p.version_bits(), 1);
    assert_eq!(p.cp.get("DataTime"), Some("20250301090000"));
    assert_eq!(p.cp.get("a21026-Cou"), Some("136.480"));
    assert_eq!(p.cp.get("a00000-Min"), Some("430.00"));
    assert_eq!(p.cp.0.len(), 5);
    let std = hj212::parse(STANDARD_1062, &table(), &opts()).unwrap();
    assert_eq!(std.cp.get("RtdInterval"), Some("30"));
    assert_eq!(std.mn, "010000A8900016F000169DC0");
}

#[test]
fn flags_follow_quality_and_validity() {
    let t = table();
    let expected = [
        (Quality::Good, 'N'),
        (Quality::CommFail, 'B'),
        (Quality::DeviceException, 'D'),
        (Quality::OutOfRange, 'T'),
        (Quality::Stale, 'B'),
        (Quality::Substituted, 'S'),
        (Quality::Maintenance, 'M'),
        (Quality::Calibration, 'C'),
    ];
    for (q, flag) in expected {
        assert_eq!(hj212::window_flag(&t, q, true), flag, "{q}");
    }
    // Worked example 5: an hour with 44 valid minutes is invalid and is still uploaded, flagged.
    assert_eq!(hj212::window_flag(&t, Quality::Good, false), 'D');
    assert_eq!(hj212::window_flag(&t, Quality::Calibration, false), 'C');

    let mut a = agg("so2_mg_m3", 85.3, 70.2, 99.8, 136.48);
    a.quality = Quality::Calibration;
    a.avg = None;
    a.total = None;
    let packets = hj212::encode_window(&t, &station(true), T_1000_CST, &[a]).unwrap();
    let p = hj212::parse(packets[0].as_bytes(), &t, &opts()).unwrap();
    assert_eq!(p.cp.get("a21026-Flag"), Some("C"));
    assert_eq!(p.cp.get("a21026-Avg"), None, "a missing value is left out");
    assert_eq!(p.cp.get("a21026-Cou"), None);
    assert_eq!(p.cp.get("a21026-Min"), Some("70.2"));
}

#[test]
fn period_selects_the_command() {
    let t = table();
    for (period, cn) in [
        (Period::Minute, 2051),
        (Period::Hour, 2061),
        (Period::Day, 2031),
    ] {
        let mut a = agg("so2_mg_m3", 1.0, 1.0, 1.0, 1.0);
        a.period = period;
        let packets = hj212::encode_window(&t, &station(false), T_1000_CST, &[a]).unwrap();
        let p = hj212::parse(packets[0].as_bytes(), &t, &opts()).unwrap();
        assert_eq!(p.cn, cn);
        assert_eq!(p.flag, 4);
    }
}

#[test]
fn encoder_refuses_what_it_cannot_say() {
    let t = table();
    let s = station(true);
    assert_eq!(
        hj212::encode_window(&t, &s, T_1000_CST, &[]),
        Err(EncodeError::Empty)
    );
    let unknown = agg("unobtainium_mg_m3", 1.0, 1.0, 1.0, 1.0);
    assert_eq!(
        hj212::encode_window(&t, &s, T_1000_CST, &[unknown]),
        Err(EncodeError::UnknownQuantity("unobtainium_mg_m3".into()))
    );
    let a = agg("so2_mg_m3", 1.0, 1.0, 1.0, 1.0);
    let mut b = agg("nox_mg_m3", 1.0, 1.0, 1.0, 1.0);
    b.period = Period::Day;
    assert_eq!(
        hj212::encode_window(&t, &s, T_1000_CST, &[a.clone(), b]),
        Err(EncodeError::MixedWindows)
    );
    let mut bad = s.clone();
    bad.pw = "12345".into();
    assert!(matches!(
        hj212::encode_window(&t, &bad, T_1000_CST, &[a]),
        Err(EncodeError::BadStation { field: "PW", .. })
    ));
}

/// Replace `from` by `to` in the data segment and re-frame with a correct length and CRC, so that
/// the field check (not the CRC) is what rejects it.
fn reframed(packet: &[u8], from: &str, to: &str) -> Vec<u8> {
    let seg = std::str::from_utf8(segment_and_crc(packet).0).unwrap();
    assert!(seg.contains(from), "{from}");
    hj212::frame(&seg.replacen(from, to, 1))
        .unwrap()
        .into_bytes()
}

#[test]
fn every_rejection_carries_its_qn_rtn() {
    let t = table();
    let good = HOURLY_2061;
    let mut wrong_crc = good.to_vec();
    let n = wrong_crc.len();
    wrong_crc[n - 3] = b'0'; // D581 -> D501
    let mut flipped = good.to_vec();
    flipped[40] ^= 0x01; // a byte of the segment: CRC no longer matches
    let mut wrong_len = good.to_vec();
    wrong_len[2..6].copy_from_slice(b"0434");
    let mut no_tail = good.to_vec();
    no_tail.truncate(n - 2);
    let mut no_head = good.to_vec();
    no_head[0] = b'$';
    let mut bad_len_digits = good.to_vec();
    bad_len_digits[2..6].copy_from_slice(b"04x5");
    let mut lower_crc_garbage = good.to_vec();
    lower_crc_garbage[n - 6..n - 2].copy_from_slice(b"D5G1");

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("wrong CRC", wrong_crc, qn_rtn::CRC),
        ("flipped byte", flipped, qn_rtn::CRC),
        ("length field off by one", wrong_len, qn_rtn::REJECTED),
        ("no CR LF", no_tail, qn_rtn::REJECTED),
        ("no ##", no_head, qn_rtn::REJECTED),
        ("length not digits", bad_len_digits, qn_rtn::REJECTED),
        ("CRC not hex", lower_crc_garbage, qn_rtn::REJECTED),
        ("short", b"##00".to_vec(), qn_rtn::REJECTED),
        (
            "QN too short",
            reframed(good, "QN=20250301100000000", "QN=2025030110000000"),
            qn_rtn::WRONG_QN,
        ),
        (
            "QN bad month",
            reframed(good, "QN=20250301", "QN=20251301"),
            qn_rtn::WRONG_QN,
        ),
        (
            "ST unknown",
            reframed(good, "ST=31", "ST=99"),
            qn_rtn::WRONG_ST,
        ),
        (
            "ST three digits",
            reframed(good, "ST=31", "ST=031"),
            qn_rtn::WRONG_ST,
        ),
        (
            "CN not 4 digits",
            reframed(good, "CN=2061", "CN=206"),
            qn_rtn::WRONG_CN,
        ),
        (
            "CN letters",
            reframed(good, "CN=2061", "CN=2O61"),
            qn_rtn::WRONG_CN,
        ),
        (
            "PW too short",
            reframed(good, "PW=123456", "PW=12345"),
            qn_rtn::WRONG_PW,
        ),
        (
            "MN too long",
            reframed(good, "MN=QHAL", "MN=XQHAL"),
            qn_rtn::WRONG_MN,
        ),
        (
            "MN empty",
            reframed(good, "MN=QHAL0000000000000000GTC1", "MN="),
            qn_rtn::WRONG_MN,
        ),
        (
            "Flag not a number",
            reframed(good, "Flag=5", "Flag=x"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "Flag over 255",
            reframed(good, "Flag=5", "Flag=256"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "D bit without PNUM",
            reframed(good, "Flag=5", "Flag=7"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "PNUM without D bit",
            reframed(good, "Flag=5;", "Flag=5;PNUM=2;PNO=1;"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "PNO beyond PNUM",
            reframed(good, "Flag=5;", "Flag=7;PNUM=2;PNO=3;"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "PNO zero",
            reframed(good, "Flag=5;", "Flag=7;PNUM=2;PNO=0;"),
            qn_rtn::WRONG_FLAG,
        ),
        (
            "unknown field",
            reframed(good, "Flag=5;", "Flag=5;XX=1;"),
            qn_rtn::REJECTED,
        ),
        (
            "ST twice",
            reframed(good, "CN=2061;", "CN=2061;ST=31;"),
            qn_rtn::REJECTED,
        ),
        ("no CP", reframed(good, "CP=&&", "CX=&&"), qn_rtn::REJECTED),
        (
            "CP not closed",
            reframed(good, "N&&", "N&"),
            qn_rtn::REJECTED,
        ),
        (
            "CP pair without =",
            reframed(good, "a34013-Avg=4.2", "a34013-Avg4.2"),
            qn_rtn::REJECTED,
        ),
        (
            "CP empty item",
            reframed(good, "N;a21026", "N;;a21026"),
            qn_rtn::REJECTED,
        ),
        (
            "field without =",
            reframed(good, "ST=31;", "ST31;"),
            qn_rtn::REJECTED,
        ),
    ];
    for (what, packet, rtn) in cases {
        let err = hj212::parse(&packet, &t, &opts()).expect_err(&format!(
            "{what} must be rejected: {}",
            String::from_utf8_lossy(&packet)
        ));
        assert_eq!(err.qn_rtn(), rtn, "{what}: {err}");
    }

    // Not UTF-8: framed correctly, rejected as a malformed segment.
    let mut seg = segment_and_crc(good).0.to_vec();
    seg[50] = 0xFF;
    let mut raw = format!("##{:04}", seg.len()).into_bytes();
    raw.extend_from_slice(&seg);
    raw.extend_from_slice(format!("{:04X}\r\n", hj212::crc16(&seg)).as_bytes());
    assert_eq!(
        hj212::parse(&raw, &t, &opts()).unwrap_err().qn_rtn(),
        qn_rtn::REJECTED
    );

    // Expected PW and MN.
    let strict = ParseOptions {
        expected_pw: Some("654321".into()),
        ..opts()
    };
    assert_eq!(
        hj212::parse(good, &t, &strict).unwrap_err().qn_rtn(),
        qn_rtn::WRONG_PW
    );
    let strict = ParseOptions {
        expected_mn: Some("QHAL0000000000000000GTC2".into()),
        ..opts()
    };
    assert_eq!(
        hj212::parse(good, &t, &strict).unwrap_err().qn_rtn(),
        qn_rtn::WRONG_MN
    );
}

#[test]
fn swapped_crc_is_accepted_only_when_asked() {
    let mut swapped = HOURLY_2061.to_vec();
    let n = swapped.len();
    swapped[n - 6..n - 2].copy_from_slice(b"81D5");
    let err = hj212::parse(&swapped, &table(), &opts()).unwrap_err();
    assert_eq!(err.qn_rtn(), 9);
    let lenient = ParseOptions {
        accept_swapped_crc: true,
        ..opts()
    };
    assert!(hj212::parse(&swapped, &table(), &lenient).is_ok());
}

fn many_aggregates(n: usize) -> Vec<Aggregate> {
    let codes = [
        "so2_mg_m3",
        "nox_mg_m3",
        "particulate_mg_m3",
        "fluoride_mg_m3",
        "o2_pct",
    ];
    (0..n)
        .map(|i| {
            agg(
                codes[i % codes.len()],
                12.345 + i as f64,
                1.0,
                99.0,
                1234.5678,
            )
        })
        .collect()
}

#[test]
fn a_long_data_area_is_split_over_pnum_pno() {
    let t = table();
    // 25 items of ~95 characters: about 2400 characters of data area.
    let aggs = many_aggregates(25);
    let packets = hj212::encode_window(&t, &station(true), T_1000_CST, &aggs).unwrap();
    assert!(packets.len() >= 3, "{} packets", packets.len());
    let pnum = packets.len() as u16;
    let mut items_seen = 0;
    for (i, text) in packets.iter().enumerate() {
        let p = hj212::parse(text.as_bytes(), &t, &opts()).unwrap();
        assert!(text.len() - 12 <= 1024);
        assert!(p.cp.to_string().len() <= 950);
        assert_eq!(p.flag, 7, "2017 + split + ack");
        assert_eq!(p.split, Some((pnum, i as u16 + 1)));
        assert_eq!(
            p.qn.as_deref(),
            Some("20250301100000000"),
            "same QN for all parts"
        );
        assert_eq!(
            p.cp.0[0],
            vec![("DataTime".to_owned(), "20250301090000".to_owned())]
        );
        items_seen += p.cp.0.len() - 1;
    }
    assert_eq!(items_seen, 25, "no item lost or repeated");
    // A short window fits one packet without D.
    let one = hj212::encode_window(&t, &station(true), T_1000_CST, &many_aggregates(3)).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        hj212::parse(one[0].as_bytes(), &t, &opts()).unwrap().split,
        None
    );
}

#[test]
fn local_time_texts_round_trip_and_cross_midnight() {
    assert_eq!(
        hj212::qn_text(Timestamp(T_1000_CST.0 + 7), 480),
        "20250301100000007"
    );
    assert_eq!(
        hj212::data_time_text(Timestamp(1_740_787_199_000), 480),
        "20250301075959"
    );
    // 2024-12-31T16:00:00Z is 2025-01-01 00:00 in China.
    assert_eq!(
        hj212::data_time_text(Timestamp(1_735_660_800_000), 480),
        "20250101000000"
    );
    assert_eq!(
        hj212::data_time_text(Timestamp(1_709_164_800_000), 0),
        "20240229000000"
    );
    assert_eq!(
        hj212::parse_time_text("20250230000000", 480),
        None,
        "no 30 February"
    );
    assert_eq!(
        hj212::parse_time_text("20250301100000", 480),
        Some(T_1000_CST)
    );
}

#[test]
fn scan_finds_frames_in_a_stream() {
    let mut buf = b"xx#".to_vec();
    assert_eq!(hj212::scan(&buf), Scan::Skip(2));
    buf.drain(..2);
    buf.extend_from_slice(&REALTIME_2011[1..20]);
    assert_eq!(hj212::scan(&buf), Scan::Incomplete);
    buf.extend_from_slice(&REALTIME_2011[20..]);
    buf.extend_from_slice(&HOURLY_2061[..10]);
    assert_eq!(hj212::scan(&buf), Scan::Frame(REALTIME_2011.len()));
    assert_eq!(&buf[..REALTIME_2011.len()], REALTIME_2011);
    assert_eq!(hj212::scan(b"##ab12"), Scan::Skip(2));
    assert_eq!(hj212::scan(b"##01"), Scan::Incomplete);
}

#[test]
fn table_2025_can_be_loaded_as_data() {
    let text = include_str!("../config/hj212/hj212-2017.toml")
        .replace("name = \"HJ 212-2017\"", "name = \"HJ 212-2025 (draft)\"")
        .replace("version_bits = 1", "version_bits = 2")
        .replace(
            "91 = \"system interaction\"",
            "91 = \"system interaction\"\n42 = \"exhaust working condition\"",
        );
    let t = Table::from_toml(&text).unwrap();
    assert_eq!(t.flag(false, true), 9);
    assert!(t.systems.contains_key(&42));
    let packets = hj212::encode_window(
        &t,
        &station(true),
        T_1000_CST,
        &[agg("so2_mg_m3", 1.0, 1.0, 1.0, 1.0)],
    )
    .unwrap();
    assert_eq!(
        hj212::parse(packets[0].as_bytes(), &t, &opts())
            .unwrap()
            .version_bits(),
        2
    );
    assert!(Table::from_toml("name = 1").is_err());
    let dup = format!(
        "{}\n[[factors]]\ncode = \"a99999\"\nname = \"x\"\nunit = \"x\"\nquantities = [\"so2_mg_m3\"]\ndecimals = 1\ncou_decimals = 1\n",
        include_str!("../config/hj212/hj212-2017.toml")
    );
    assert!(matches!(
        Table::from_toml(&dup),
        Err(hj212::TableError::Invalid(_))
    ));
}

fn field_text(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop::sample::select(b"ABCZaz09-_.:/".to_vec()), len)
        .prop_map(|v| String::from_utf8(v).unwrap())
}

fn cp_strategy() -> impl Strategy<Value = Cp> {
    let pair = (field_text(1..=12), field_text(0..=12));
    let item = proptest::collection::vec(pair, 1..4);
    proptest::collection::vec(item, 0..6).prop_map(Cp)
}

fn packet_strategy() -> impl Strategy<Value = Packet> {
    let st = prop::sample::select(vec![21u16, 22, 31, 32, 91]);
    (
        proptest::option::of(0i64..4_102_444_800_000),
        st,
        0u16..10_000,
        field_text(6..=6),
        field_text(1..=24),
        0u8..64,
        any::<bool>(),
        (1u16..10_000, 1u16..10_000),
        cp_strategy(),
    )
        .prop_map(|(qn, st, cn, pw, mn, version, ack, (a, b), cp)| {
            let split = version % 2 == 1;
            Packet {
                qn: qn.map(|ms| hj212::qn_text(Timestamp(ms), 480)),
                st,
                cn,
                pw,
                mn,
                flag: (version << 2) | (u8::from(split) << 1) | u8::from(ack),
                split: split.then(|| (a.max(b), a.min(b))),
                cp,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_gives_back_the_packet(p in packet_strategy()) {
        let wire = p.encode().unwrap();
        let back = hj212::parse(wire.as_bytes(), &table(), &opts()).unwrap();
        prop_assert_eq!(back, p);
    }

    #[test]
    fn windows_round_trip_through_the_parser(
        values in proptest::collection::vec((0.0f64..9999.0, 0.0f64..1e6, 0usize..8), 1..30)
    ) {
        let t = table();
        let qs = ["so2_mg_m3", "nox_mg_m3", "particulate_mg_m3", "fluoride_mg_m3", "o2_pct", "flow_m3_s"];
        let aggs: Vec<Aggregate> = values
            .iter()
            .enumerate()
            .map(|(i, &(v, total, q))| {
                let mut a = agg(qs[i % qs.len()], v, v, v, total);
                a.quality = Quality::ALL[q];
                a
            })
            .collect();
        let packets = hj212::encode_window(&t, &station(true), T_1000_CST, &aggs).unwrap();
        let mut items = Vec::new();
        for wire in &packets {
            prop_assert!(wire.len() - 12 <= t.limits.max_data_segment);
            let p = hj212::parse(wire.as_bytes(), &t, &opts()).unwrap();
            prop_assert_eq!(p.cp.get("DataTime"), Some("20250301090000"));
            items.extend(p.cp.0.into_iter().skip(1));
        }
        prop_assert_eq!(items.len(), aggs.len());
        for (item, a) in items.iter().zip(&aggs) {
            let f = t.factor(&a.quantity).unwrap();
            let avg = item.iter().find(|(k, _)| *k == format!("{}-Avg", f.code)).unwrap();
            let parsed: f64 = avg.1.parse().unwrap();
            prop_assert!((parsed - a.avg.unwrap()).abs() <= 0.5 * 10f64.powi(-(f.decimals as i32)) + 1e-9);
            let flag = item.iter().find(|(k, _)| *k == format!("{}-Flag", f.code)).unwrap();
            prop_assert_eq!(flag.1.chars().next(), Some(t.flags.for_quality(a.quality)));
        }
    }

    /// Bounded fuzz: arbitrary bytes never panic the scanner or the parser.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
        let _ = hj212::parse(&bytes, &table(), &opts());
        let _ = hj212::scan(&bytes);
        let mut framed = format!("##{:04}", bytes.len()).into_bytes();
        framed.extend_from_slice(&bytes);
        framed.extend_from_slice(format!("{:04X}\r\n", hj212::crc16(&bytes)).as_bytes());
        let _ = hj212::parse(&framed, &table(), &opts());
    }

    /// Bounded fuzz: any single-byte change of a valid packet is rejected or parses to a packet
    /// that reprints to exactly the mutated bytes (it never silently changes meaning).
    #[test]
    fn mutated_valid_packets_are_rejected_or_exact(pos in 0usize..447, byte in any::<u8>()) {
        let mut bytes = HOURLY_2061.to_vec();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        match hj212::parse(&bytes, &table(), &opts()) {
            Ok(p) => prop_assert_eq!(p.encode().unwrap().into_bytes(), bytes),
            Err(e) => prop_assert!([2u16, 3, 4, 5, 6, 7, 8, 9, 100].contains(&e.qn_rtn())),
        }
    }
}

#[test]
fn history_requests_are_read_from_the_data_area() {
    let t = table();
    let packet = |cn: u16, cp: &str| Packet {
        qn: Some("20250301120000001".into()),
        st: 31,
        cn,
        pw: "123456".into(),
        mn: "QHAL0000000000000000GTC1".into(),
        flag: 5,
        split: None,
        cp: Cp::parse(cp).unwrap(),
    };
    let range = "BeginTime=20250301090000,EndTime=20250301110000";
    let h = hj212::history_request(&t, &packet(2061, range), 480)
        .unwrap()
        .unwrap();
    assert_eq!(h.period, Period::Hour);
    assert_eq!(h.begin, T_0900_CST);
    assert_eq!(h.end, Timestamp(T_0900_CST.0 + 2 * 3_600_000));
    let d = hj212::history_request(&t, &packet(2031, range), 480)
        .unwrap()
        .unwrap();
    assert_eq!(d.period, Period::Day);
    // An upload (DataTime, no BeginTime) and another command are not requests.
    assert_eq!(
        hj212::history_request(&t, &packet(2061, "DataTime=20250301090000"), 480),
        Ok(None)
    );
    assert_eq!(
        hj212::history_request(&t, &packet(1011, range), 480),
        Ok(None)
    );
    let reversed = "BeginTime=20250301110000,EndTime=20250301090000";
    let err = hj212::history_request(&t, &packet(2051, reversed), 480).unwrap_err();
    assert_eq!(err.qn_rtn(), qn_rtn::REJECTED);
    let no_end = "BeginTime=20250301110000";
    assert!(hj212::history_request(&t, &packet(2051, no_end), 480).is_err());

    let answer = hj212::system_time(&t, &station(false), "20250301120000001", T_1000_CST).unwrap();
    let p = hj212::parse(answer.as_bytes(), &t, &opts()).unwrap();
    assert_eq!((p.cn, p.flag), (1011, 4));
    assert_eq!(p.cp.get("SystemTime"), Some("20250301100000"));
    assert_eq!(p.qn.as_deref(), Some("20250301120000001"));
}

#[test]
fn spooled_records_become_hj212_text() {
    use smeltwatch::model::{Reading, ReadingBatch, Record, Value};
    let t = table();
    let s = station(false);
    let reading = |point: &str, value: f64, quality| Reading {
        point: Arc::from(point),
        value: Some(Value::Float(value)),
        unit: Arc::from("mg/m3"),
        quality,
        ts: T_1000_CST,
    };
    let batch = Record::Batch(ReadingBatch {
        source: Arc::from("cems"),
        device: Arc::from("gtc1_cems"),
        unit_id: 1,
        poll_interval_ms: 5000,
        scheduled: T_1000_CST,
        readings: vec![
            reading("so2_mg_m3", 88.04, Quality::Good),
            reading("vendor_status_word", 3.0, Quality::Good),
            reading("nox_mg_m3", 41.0, Quality::CommFail),
        ],
    });
    let packets = hj212::encode_record(&t, &s, T_1000_CST, &batch).unwrap();
    assert_eq!(packets.len(), 1);
    let p = hj212::parse(packets[0].as_bytes(), &t, &opts()).unwrap();
    assert_eq!(p.cn, 2011);
    assert_eq!(
        p.cp.to_string(),
        "DataTime=20250301100000;a21026-Rtd=88.0,a21026-Flag=N;a21002-Rtd=41.0,a21002-Flag=B"
    );
    let hour = Record::Aggregate(agg("so2_mg_m3", 85.3, 70.2, 99.8, 136.48));
    let packets = hj212::encode_record(&t, &s, T_1000_CST, &hour).unwrap();
    let p = hj212::parse(packets[0].as_bytes(), &t, &opts()).unwrap();
    assert_eq!(p.cn, 2061);
    assert_eq!(p.cp.get("a21026-Cou"), Some("136.480"));
    let event = Record::Event(smeltwatch::model::Event {
        kind: "outage".into(),
        subject: Arc::from("x"),
        phase: smeltwatch::model::EventPhase::Instant,
        ts: T_1000_CST,
        attributes: Vec::new(),
        message: String::new(),
    });
    assert_eq!(
        hj212::encode_record(&t, &s, T_1000_CST, &event),
        Ok(Vec::new())
    );
}

/// Item 4 of issue 18: an hour of a stack with an O2 reference gives both concentrations in one
/// item, the measured as -Avg/-Min/-Max, the converted (折算) as -ZsAvg/-ZsMin/-ZsMax, and the
/// mass flow's total as -Cou (100 mg/m³ at 11 % O2, reference 6 %: 150 mg/m³ converted; 10⁶ m³/h:
/// 100 kg, from the measured concentration).
#[test]
fn item_4_measured_and_converted_concentrations_and_the_mass_share_one_item() {
    let t = table();
    let mut measured = agg("so2_mg_m3", 100.0, 98.0, 102.0, 0.0);
    measured.total = None;
    measured.total_unit = None;
    let mut converted = agg("so2_zs_mg_m3", 150.0, 147.0, 153.0, 0.0);
    converted.total = None;
    converted.total_unit = None;
    let mut mass = agg("so2_kg_h", 100.0, 98.0, 102.0, 100.0);
    mass.unit = Arc::from("kg/h");
    let flow = agg("flow_m3_s", 277.78, 270.0, 285.0, 1_000_000.0);
    let packets = hj212::encode_window(
        &t,
        &station(true),
        T_1000_CST,
        &[measured, converted, mass, flow],
    )
    .unwrap();
    assert_eq!(packets.len(), 1);
    let p = hj212::parse(packets[0].as_bytes(), &t, &opts()).unwrap();
    let so2: Vec<String> = p.cp.0[1].iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        so2.join(","),
        "a21026-Avg=100.0,a21026-Min=98.0,a21026-Max=102.0,a21026-ZsAvg=150.0,\
         a21026-ZsMin=147.0,a21026-ZsMax=153.0,a21026-Cou=100.000,a21026-Flag=N"
    );
    assert_eq!(p.cp.0.len(), 3, "DataTime, SO2, flow: {}", p.cp);
    assert!(t.factor("so2_zs_mg_m3").is_some() && t.factor("so2_kg_h").is_some());
}

#[test]
fn a_live_derived_point_named_by_a_factor_code_goes_out_in_2011_like_any_reading() {
    use smeltwatch::model::{Reading, ReadingBatch, Record, Value};
    let reading = |point: &str, value: f64, unit: &str| Reading {
        point: point.into(),
        value: Some(Value::Float(value)),
        unit: unit.into(),
        quality: Quality::Good,
        ts: T_1000_CST,
    };
    // The batch fan-out makes of `live` derived points: source `derived`, device `derived/<device>`.
    let batch = ReadingBatch {
        source: "derived".into(),
        device: "derived/stack1".into(),
        unit_id: 0,
        poll_interval_ms: 1000,
        scheduled: T_1000_CST,
        readings: vec![
            reading("so2_mg_m3", 88.0, "mg/m3"),
            reading("mean_cell_voltage_v", 4.12, "V"),
        ],
    };
    let packets =
        hj212::encode_record(&table(), &station(false), T_1000_CST, &Record::Batch(batch)).unwrap();
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert!(packets[0].contains("CN=2011"), "{}", packets[0]);
    assert!(packets[0].contains("a21026-Rtd=88"), "{}", packets[0]);
    // A derived point without a factor code has no HJ 212 form.
    assert!(!packets[0].contains("4.12"), "{}", packets[0]);
}
