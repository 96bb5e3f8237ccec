//! SEV-SNP evidence in the form of guest-components' SNP attester, the one Trustee's
//! stock client sends and Trustee's SNP verifier reads (docs/broker-protocol.md §2.1):
//!
//! ```json
//! {"attestation_report": { "version": 2, "guest_svn": 0, "policy": 196608, ... },
//!  "cert_chain": [{"cert_type": "VCEK", "data": [48, 130, ...]}]}
//! ```
//!
//! The report is written as the `sev` crate's serde derive writes it (fields as JSON
//! numbers and byte arrays, in the order of the report struct). The trainer builds it
//! from the raw 1184-byte report and the certificate table that configfs-tsm returns;
//! the broker rebuilds the raw bytes from it with `sev`'s encoder and checks the
//! signature over those, so a field misread on either side fails closed.
//!
//! This module only converts between forms; it verifies nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sev::certs::snp::ecdsa::Signature;
use sev::firmware::guest::{AttestationReport, GuestPolicy, KeyInfo, PlatformInfo, Version};
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;

use crate::{Error, Result};

/// Length of a raw SNP attestation report.
pub const REPORT_LEN: usize = 1184;

/// The evidence object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnpEvidence {
    /// The attestation report, field by field.
    pub attestation_report: Report,
    /// The certificates the host attached to the report (the extended report's table).
    pub cert_chain: Option<Vec<CertEntry>>,
}

/// One certificate of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertEntry {
    /// `"VCEK"`, `"VLEK"`, `"ASK"`, `"ARK"`, `"CRL"`, `"Empty"` or `{"OTHER": "<uuid>"}`.
    pub cert_type: Value,
    /// The certificate, DER.
    pub data: Vec<u8>,
}

/// TCB version components.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Tcb {
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

/// Firmware version.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Ver {
    pub major: u8,
    pub minor: u8,
    pub build: u8,
}

/// ECDSA P-384 signature, little-endian, zero-padded to 72 bytes each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Sig {
    pub r: Vec<u8>,
    pub s: Vec<u8>,
}

/// The report's fields, in the report's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: Vec<u8>,
    pub image_id: Vec<u8>,
    pub vmpl: u32,
    pub sig_algo: u32,
    pub current_tcb: Tcb,
    pub plat_info: u64,
    pub key_info: u32,
    pub report_data: Vec<u8>,
    pub measurement: Vec<u8>,
    pub host_data: Vec<u8>,
    pub id_key_digest: Vec<u8>,
    pub author_key_digest: Vec<u8>,
    pub report_id: Vec<u8>,
    pub report_id_ma: Vec<u8>,
    pub reported_tcb: Tcb,
    pub cpuid_fam_id: Option<u8>,
    pub cpuid_mod_id: Option<u8>,
    pub cpuid_step: Option<u8>,
    pub chip_id: Vec<u8>,
    pub committed_tcb: Tcb,
    pub current: Ver,
    pub committed: Ver,
    pub launch_tcb: Tcb,
    pub launch_mit_vector: Option<u64>,
    pub current_mit_vector: Option<u64>,
    pub signature: Sig,
}

/// Certificate-table GUIDs (GHCB specification, extended guest request), in the
/// table's little-endian layout, and the names guest-components gives them.
const GUIDS: [(&str, [u8; 16]); 5] = [
    (
        "ARK",
        guid_le(
            0xc0b406a4,
            0xa803,
            0x4952,
            [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae],
        ),
    ),
    (
        "ASK",
        guid_le(
            0x4ab7b379,
            0xbbac,
            0x4fe4,
            [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82],
        ),
    ),
    (
        "VCEK",
        guid_le(
            0x63da758d,
            0xe664,
            0x4564,
            [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd],
        ),
    ),
    (
        "VLEK",
        guid_le(
            0xa8074bc2,
            0xa25a,
            0x483e,
            [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1],
        ),
    ),
    (
        "CRL",
        guid_le(
            0x92f81bc3,
            0x5811,
            0x4d3d,
            [0x97, 0xff, 0xd1, 0x9f, 0x88, 0xdc, 0x67, 0xea],
        ),
    ),
];

const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

fn uuid_text(g: &[u8]) -> String {
    let h = |r: std::ops::Range<usize>, rev: bool| {
        let mut v = g[r].to_vec();
        if rev {
            v.reverse();
        }
        hex::encode(v)
    };
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4, true),
        h(4..6, true),
        h(6..8, true),
        h(8..10, false),
        h(10..16, false)
    )
}

/// Entries of an SNP certificate table: 24-byte headers (GUID, offset, length) ended by
/// an all-zero GUID (or by the end of the buffer), each pointing at a certificate inside
/// the table.
pub fn parse_cert_table(t: &[u8]) -> Result<Vec<CertEntry>> {
    let bad = |m: &str| Error::Malformed(format!("SNP certificate table: {m}"));
    let mut out = vec![];
    let mut at = 0;
    loop {
        let Some(h) = t.get(at..at + 24) else {
            return Ok(out);
        };
        let guid = &h[..16];
        if guid.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let off = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
        let len = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes")) as usize;
        let data = off
            .checked_add(len)
            .and_then(|end| t.get(off..end))
            .ok_or_else(|| bad("an entry points outside the table"))?;
        let cert_type = GUIDS.iter().find(|(_, g)| g == guid).map_or_else(
            || serde_json::json!({ "OTHER": uuid_text(guid) }),
            |(n, _)| (*n).into(),
        );
        out.push(CertEntry {
            cert_type,
            data: data.to_vec(),
        });
        at += 24;
    }
}

fn tcb_of(t: &TcbVersion) -> Tcb {
    Tcb {
        fmc: t.fmc,
        bootloader: t.bootloader,
        tee: t.tee,
        snp: t.snp,
        microcode: t.microcode,
    }
}

fn tcb(t: &Tcb) -> TcbVersion {
    TcbVersion {
        fmc: t.fmc,
        bootloader: t.bootloader,
        tee: t.tee,
        snp: t.snp,
        microcode: t.microcode,
    }
}

fn bytes<const N: usize>(v: &[u8], name: &str) -> Result<[u8; N]> {
    v.try_into().map_err(|_| {
        Error::Malformed(format!(
            "attestation_report.{name} is {} bytes, expected {N}",
            v.len()
        ))
    })
}

impl SnpEvidence {
    /// Evidence from a raw report and its certificate table (configfs-tsm's `outblob`
    /// and `auxblob`), as guest-components' attester writes it.
    pub fn from_raw(raw: &[u8], cert_table: Option<&[u8]>) -> Result<SnpEvidence> {
        if raw.len() != REPORT_LEN {
            return Err(Error::Malformed(format!(
                "SNP report is {} bytes, expected {REPORT_LEN}",
                raw.len()
            )));
        }
        let r = AttestationReport::from_bytes(raw)
            .map_err(|e| Error::Malformed(format!("SNP report: {e}")))?;
        let v = |v: &Version| Ver {
            major: v.major,
            minor: v.minor,
            build: v.build,
        };
        let attestation_report = Report {
            version: r.version,
            guest_svn: r.guest_svn,
            policy: r.policy.into(),
            family_id: r.family_id.to_vec(),
            image_id: r.image_id.to_vec(),
            vmpl: r.vmpl,
            sig_algo: r.sig_algo,
            current_tcb: tcb_of(&r.current_tcb),
            plat_info: r.plat_info.into(),
            key_info: r.key_info.into(),
            report_data: r.report_data.to_vec(),
            measurement: r.measurement.to_vec(),
            host_data: r.host_data.to_vec(),
            id_key_digest: r.id_key_digest.to_vec(),
            author_key_digest: r.author_key_digest.to_vec(),
            report_id: r.report_id.to_vec(),
            report_id_ma: r.report_id_ma.to_vec(),
            reported_tcb: tcb_of(&r.reported_tcb),
            cpuid_fam_id: r.cpuid_fam_id,
            cpuid_mod_id: r.cpuid_mod_id,
            cpuid_step: r.cpuid_step,
            chip_id: r.chip_id.to_vec(),
            committed_tcb: tcb_of(&r.committed_tcb),
            current: v(&r.current),
            committed: v(&r.committed),
            launch_tcb: tcb_of(&r.launch_tcb),
            launch_mit_vector: r.launch_mit_vector,
            current_mit_vector: r.current_mit_vector,
            signature: Sig {
                r: r.signature.r().to_vec(),
                s: r.signature.s().to_vec(),
            },
        };
        let cert_chain = cert_table.map(parse_cert_table).transpose()?;
        Ok(SnpEvidence {
            attestation_report,
            cert_chain,
        })
    }

    /// The raw 1184-byte report rebuilt from the fields with `sev`'s encoder.
    pub fn raw_report(&self) -> Result<Vec<u8>> {
        let r = &self.attestation_report;
        let version = |v: &Ver| Version::new(v.major, v.minor, v.build);
        let report = AttestationReport {
            version: r.version,
            guest_svn: r.guest_svn,
            policy: GuestPolicy::from(r.policy),
            family_id: bytes(&r.family_id, "family_id")?,
            image_id: bytes(&r.image_id, "image_id")?,
            vmpl: r.vmpl,
            sig_algo: r.sig_algo,
            current_tcb: tcb(&r.current_tcb),
            plat_info: PlatformInfo::from(r.plat_info),
            key_info: KeyInfo::from(r.key_info),
            report_data: bytes(&r.report_data, "report_data")?,
            measurement: bytes(&r.measurement, "measurement")?,
            host_data: bytes(&r.host_data, "host_data")?,
            id_key_digest: bytes(&r.id_key_digest, "id_key_digest")?,
            author_key_digest: bytes(&r.author_key_digest, "author_key_digest")?,
            report_id: bytes(&r.report_id, "report_id")?,
            report_id_ma: bytes(&r.report_id_ma, "report_id_ma")?,
            reported_tcb: tcb(&r.reported_tcb),
            cpuid_fam_id: r.cpuid_fam_id,
            cpuid_mod_id: r.cpuid_mod_id,
            cpuid_step: r.cpuid_step,
            chip_id: bytes(&r.chip_id, "chip_id")?,
            committed_tcb: tcb(&r.committed_tcb),
            current: version(&r.current),
            committed: version(&r.committed),
            launch_tcb: tcb(&r.launch_tcb),
            launch_mit_vector: r.launch_mit_vector,
            current_mit_vector: r.current_mit_vector,
            signature: Signature::new(
                bytes(&r.signature.r, "signature.r")?,
                bytes(&r.signature.s, "signature.s")?,
            ),
        };
        let raw = report
            .to_bytes()
            .map_err(|e| Error::Malformed(format!("attestation_report: {e}")))?;
        Ok(raw.as_ref().to_vec())
    }

    /// The one VCEK of the certificate table (DER).
    pub fn vcek(&self) -> Result<&[u8]> {
        let mut vceks = self
            .cert_chain
            .iter()
            .flatten()
            .filter(|c| c.cert_type == "VCEK");
        match (vceks.next(), vceks.next()) {
            (Some(c), None) => Ok(&c.data),
            (None, _) => Err(Error::Unsupported(
                "cert_chain holds no VCEK (VLEK-signed reports are not supported)".into(),
            )),
            (Some(_), Some(_)) => Err(Error::Malformed("cert_chain holds two VCEKs".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_read_as_the_ghcb_spec_writes_them() {
        assert_eq!(
            uuid_text(&GUIDS[2].1),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
        assert_eq!(
            uuid_text(&GUIDS[0].1),
            "c0b406a4-a803-4952-9743-3fb6014cd0ae"
        );
    }

    #[test]
    fn cert_tables_parse_and_bad_ones_are_refused() {
        let mut t = vec![];
        t.extend_from_slice(&GUIDS[2].1);
        t.extend_from_slice(&72u32.to_le_bytes());
        t.extend_from_slice(&3u32.to_le_bytes());
        t.extend_from_slice(&[7; 16]);
        t.extend_from_slice(&75u32.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&[0; 24]);
        t.extend_from_slice(&[1, 2, 3, 9]);
        let e = parse_cert_table(&t).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].cert_type, "VCEK");
        assert_eq!(e[0].data, [1, 2, 3]);
        assert_eq!(
            e[1].cert_type,
            serde_json::json!({"OTHER": "07070707-0707-0707-0707-070707070707"})
        );
        assert_eq!(e[1].data, [9]);
        // An entry pointing past the end is refused, not truncated.
        let mut past = t.clone();
        past[20] = 200;
        assert!(parse_cert_table(&past).is_err());
        // The end of the buffer ends the table too.
        let mut short = GUIDS[2].1.to_vec();
        short.extend_from_slice(&24u32.to_le_bytes());
        short.extend_from_slice(&2u32.to_le_bytes());
        short.extend_from_slice(&[5, 6]);
        let e = parse_cert_table(&short).unwrap();
        assert_eq!((e.len(), &e[0].data[..]), (1, &[5, 6][..]));
        let mut wrap = t.clone();
        wrap[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_cert_table(&wrap).is_err());
    }
}
