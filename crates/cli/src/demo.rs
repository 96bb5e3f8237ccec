//! `blindfold demo`: the owner's side of the story on Fashion-MNIST, end to end.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{Error, KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;

use crate::progress::Bars;

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";
const MARKER: &str = ".blindfold-demo";
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

fn io<T>(p: &Path, r: std::io::Result<T>) -> Result<T, Error> {
    r.map_err(|e| Error::BadInput(format!("{}: {e}", p.display())))
}

fn ensure_data(data: &Path) -> Result<(), Error> {
    let present = |d: &Path| {
        FILES
            .iter()
            .all(|f| d.join(format!("{f}.gz")).exists() || d.join(f).exists())
    };
    if present(data) {
        return Ok(());
    }
    if data != Path::new(FASHION_MNIST) {
        return Err(Error::BadInput(format!(
            "{}: no Fashion-MNIST IDX files there (expected {})",
            data.display(),
            FILES.join(", ")
        )));
    }
    eprintln!(
        "Fashion-MNIST is not installed; trying `apt-get install -y dataset-fashion-mnist` ..."
    );
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "dataset-fashion-mnist"])
        .status()
        .is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .args(["update", "-q"])
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-q", "dataset-fashion-mnist"])
                .status()
                .is_ok_and(|s| s.success()));
    if ok && present(data) {
        return Ok(());
    }
    Err(Error::BadInput(format!(
        "Fashion-MNIST is not in {FASHION_MNIST} and could not be installed: run \
         `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass --data DIR \
         with the four IDX files"
    )))
}

fn original(data: &Path, name: &str) -> Result<Vec<u8>, Error> {
    let plain = data.join(name);
    if plain.exists() {
        return io(&plain, fs::read(&plain));
    }
    let gz = data.join(format!("{name}.gz"));
    let raw = io(&gz, fs::read(&gz))?;
    let mut out = vec![];
    io(
        &gz,
        flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out),
    )?;
    Ok(out)
}

fn prepare_workdir(w: &Path) -> Result<(), Error> {
    if w.exists() {
        let empty = fs::read_dir(w)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !w.join(MARKER).exists() && !empty {
            return Err(Error::OutputExists(format!(
                "{} (not made by a previous demo; pass another --workdir)",
                w.display()
            )));
        }
        io(w, fs::remove_dir_all(w))?;
    }
    io(w, fs::create_dir_all(w))?;
    io(
        w,
        fs::write(
            w.join(MARKER),
            "made by `blindfold demo`; deleted by the next one\n",
        ),
    )
}

/// Runs the demo.
pub fn run(workdir: &Path, data: &Path, bars: &Bars) -> Result<(), Error> {
    ensure_data(data)?;
    prepare_workdir(workdir)?;
    let home = workdir.join("owner-keys");
    let sealed = workdir.join("sealed");
    let opened = workdir.join("opened");
    let tampered = workdir.join("tampered");
    let sealed_s = sealed
        .to_str()
        .ok_or_else(|| Error::BadInput("workdir must be UTF-8".into()))?;

    eprintln!("1. owner: create a key store in {}", home.display());
    let ks = KeyStore::init(&home, None)?;

    eprintln!(
        "2. owner: seal Fashion-MNIST from {} into {}",
        data.display(),
        sealed.display()
    );
    let t = Instant::now();
    let imp = import(data, Format::Idx, &ImportOptions::default())?;
    let store = Store::open(sealed_s, true)?;
    let report = blindfold_owner::seal(&ks, imp, &store, &SealOptions::default(), bars)?;
    let seal_s = t.elapsed().as_secs_f64();

    eprintln!("3. anyone: inspect the sealed copy without a key");
    let insp = blindfold_owner::inspect(&store)?;
    for s in &insp.manifest.splits {
        eprintln!(
            "   split {:<6} {:>6} records, {} shard(s)",
            s.name,
            s.records,
            s.shards.len()
        );
    }

    eprintln!("4. owner: verify every chunk");
    let t = Instant::now();
    let ds = SealedDataset::open(&ks, Store::open(sealed_s, false)?)?;
    let v = ds.verify(bars)?;
    let verify_s = t.elapsed().as_secs_f64();

    eprintln!("5. owner: start a local key broker (TLS on loopback) and register the dataset");
    eprintln!("   policy: tee = [\"sample\"], job \"demo\" -- the sample TEE proves NOTHING about the job;");
    eprintln!("   a real deployment names snp/tdx and the expected measurements instead");
    let broker_dir = workdir.join("broker");
    let admin = blindfold_broker::init(&broker_dir, &[]).map_err(Error::BadInput)?;
    let state = blindfold_broker::load(&broker_dir, None, blindfold_broker::Settings::default())
        .map_err(Error::BadInput)?;
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::BadInput(e.to_string()))?;
    let url = format!(
        "https://{}",
        listener
            .local_addr()
            .map_err(|e| Error::Bug(e.to_string()))?
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Bug(e.to_string()))?;
    let bd = blindfold_broker::BrokerDir(broker_dir.clone());
    rt.spawn(async move {
        let _ = blindfold_broker::serve(state, listener, Some(&bd)).await;
    });
    let ca = io(
        &broker_dir,
        fs::read(blindfold_broker::BrokerDir(broker_dir.clone()).cert()),
    )?;
    let opts = blindfold_attest::FetchOptions {
        broker: url.clone(),
        ca_cert_pem: Some(ca),
        job: Some("demo".into()),
    };
    let client = blindfold_attest::client(&opts).map_err(|e| Error::Bug(e.to_string()))?;
    let (id, key, digest, version) = ds.broker_registration();
    let reg = blindfold_broker::Registration {
        dataset_id: id.clone(),
        key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key[..]),
        manifest_sha256: hex::encode(digest),
        version,
        policy: "tee = [\"sample\"]\njobs = [\"demo\"]\n".into(),
    };
    drop(key);
    rt.block_on(async {
        let r = client
            .post(format!("{url}/admin/v0/datasets"))
            .bearer_auth(&admin)
            .json(&reg)
            .send()
            .await
            .map_err(|e| Error::Bug(e.to_string()))?;
        if !r.status().is_success() {
            return Err(Error::Bug(format!(
                "registration failed: HTTP {}",
                r.status()
            )));
        }
        Ok(())
    })?;

    eprintln!("6. training job: attest (sample evidence) and receive the key, encrypted to its own ephemeral key");
    let t = Instant::now();
    let released = blindfold_attest::fetch_key(
        &opts,
        &id,
        &blindfold_attest::EvidenceSource::InsecureSample { measurement: None },
    )
    .map_err(|e| Error::Bug(format!("key release failed: {e}")))?;
    let release_ms = t.elapsed().as_secs_f64() * 1e3;
    // The job opens the dataset with the released key, refusing any other manifest
    // version or digest than the one the owner registered.
    let job_view = SealedDataset::open_with_key(
        Store::open(sealed_s, false)?,
        blindfold_format::DatasetKey::from_bytes(*released.key),
        Some(blindfold_owner::Expected {
            version: released.version,
            manifest_sha256: released.manifest_sha256,
        }),
    )?;
    job_view.verify(&NoProgress)?;
    let wrong_job = blindfold_attest::fetch_key(
        &blindfold_attest::FetchOptions {
            job: Some("other".into()),
            ..opts.clone()
        },
        &id,
        &blindfold_attest::EvidenceSource::InsecureSample { measurement: None },
    );
    let denied = match wrong_job {
        Err(blindfold_attest::Error::Denied { detail, .. }) => detail,
        other => {
            return Err(Error::Bug(format!(
                "a job the policy does not name got {other:?}"
            )))
        }
    };
    eprintln!("   released in {release_ms:.0} ms; a job named \"other\" was refused: {denied}");
    drop(rt);

    eprintln!("7. attacker: flip one byte of a sealed shard in a copy; verify must refuse it");
    copy_dir(&sealed, &tampered)?;
    let shard = tampered.join(&insp.manifest.splits[0].shards[0].path);
    let mut bytes = io(&shard, fs::read(&shard))?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    io(&shard, fs::write(&shard, &bytes))?;
    let refused = match SealedDataset::open(
        &ks,
        Store::open(tampered.to_str().unwrap_or_default(), false)?,
    )
    .and_then(|d| d.verify(&NoProgress))
    {
        Err(e @ Error::Integrity { .. }) => e.to_string(),
        Err(e) => {
            return Err(Error::Bug(format!(
                "tampering gave an unexpected error: {e}"
            )))
        }
        Ok(_) => return Err(Error::Bug("a tampered shard verified".into())),
    };
    eprintln!("   refused: {refused}");

    eprintln!("8. owner: open the sealed copy and compare with the originals");
    let t = Instant::now();
    let files = ds.open_to_dir(&opened, false, bars)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut identical = 0;
    for name in FILES {
        let got = io(&opened.join(name), fs::read(opened.join(name)))?;
        if got != original(data, name)? {
            return Err(Error::Bug(format!(
                "{name} differs from the original after a round trip"
            )));
        }
        identical += 1;
    }

    let mb = report.plaintext_bytes as f64 / 1e6;
    println!();
    println!("blindfold demo: owner and key broker, Fashion-MNIST");
    println!("  dataset id            {}", report.dataset_id);
    println!(
        "  records               {} (train {}, test {})",
        v.records,
        insp.manifest.splits[0].records,
        insp.manifest.splits.get(1).map_or(0, |s| s.records)
    );
    println!(
        "  sealed                {:.1} MB in {:.2} s ({} shards, {} chunks, suite {})",
        mb,
        seal_s,
        report.shards,
        v.chunks,
        ds.manifest().suite
    );
    println!("  verified              {:.2} s", verify_s);
    println!(
        "  opened                {:.2} s, {identical}/{} files byte-identical to the originals",
        open_s,
        files.len()
    );
    println!("  tamper test           one flipped byte refused");
    println!(
        "  key broker            {url} (folder {}), key released to the job in {release_ms:.0} ms",
        broker_dir.display()
    );
    println!("  policy                sample TEE accepted for job \"demo\": NO hardware root of trust in this demo");
    println!("  key store             {}", home.display());
    println!("  sealed dataset        {}", sealed.display());
    println!("  opened files          {}", opened.display());
    println!("  tampered copy         {}", tampered.display());
    println!(
        "  not in this build yet training inside the trusted zone; on a real TEE the job would"
    );
    println!("                        attest with SEV-SNP/TDX evidence (--tee tsm) under a policy naming its measurement");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), Error> {
    io(to, fs::create_dir_all(to))?;
    for e in io(from, fs::read_dir(from))? {
        let e = io(from, e)?;
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()))?;
        } else {
            io(&p, fs::copy(&p, to.join(e.file_name())))?;
        }
    }
    Ok(())
}
