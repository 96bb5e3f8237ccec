//! `blindfold demo`: the owner's side of the story on Fashion-MNIST, end to end.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{Error, KeyStore, NoProgress, SealOptions};
use blindfold_store::Store;

use blindfold_zone::data::Splits;
use blindfold_zone::job::{self, Source};
use blindfold_zone::model;
use blindfold_zone::train::TrainConfig;

use crate::local_broker::LocalBroker;
use crate::Failure;
use blindfold_job::Bars;
use blindfold_job::EpochBars;

/// What the demo trains.
pub struct DemoTraining {
    /// Model: built in or a spec file.
    pub model: String,
    /// Epochs.
    pub epochs: usize,
    /// No progress bars.
    pub quiet: bool,
}

fn utf8(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::BadInput(format!("{}: not UTF-8", p.display())))
}

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

pub fn ensure_data(data: &Path) -> Result<(), Error> {
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
pub fn run(
    workdir: &Path,
    data: &Path,
    training: &DemoTraining,
    bars: &Bars,
) -> Result<(), Failure> {
    ensure_data(data)?;
    prepare_workdir(workdir)?;
    let home = workdir.join("owner-keys");
    let sealed = workdir.join("sealed");
    let opened = workdir.join("opened");
    let tampered = workdir.join("tampered");
    let sealed_s = utf8(&sealed)?;

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
    let ds = blindfold_owner::open(&ks, Store::open(sealed_s, false)?)?;
    let v = ds.verify(bars)?;
    let verify_s = t.elapsed().as_secs_f64();

    eprintln!("5. owner: start a local key broker (TLS on loopback) and register the dataset");
    eprintln!("   policy: tee = [\"sample\"], job \"demo\" -- the sample TEE proves NOTHING about the job;");
    eprintln!("   a real deployment names snp/tdx and the expected measurements instead");
    let broker = LocalBroker::start(&workdir.join("broker"))?;
    let id = broker.register(&ds, "tee = [\"sample\"]\njobs = [\"demo\"]\n")?;
    let opts = broker.fetch_options("demo");
    let sample = blindfold_attest::EvidenceSource::InsecureSample { measurement: None };
    let wrong_job = blindfold_attest::fetch_key(
        &blindfold_attest::FetchOptions {
            job: Some("other".into()),
            ..opts.clone()
        },
        &id,
        &sample,
    );
    let denied = match wrong_job {
        Err(blindfold_attest::Error::Denied { detail, .. }) => detail,
        other => {
            return Err(Error::Bug(format!("a job the policy does not name got {other:?}")).into())
        }
    };
    eprintln!("   a job named \"other\" is refused: {denied}");

    let mut cfg = TrainConfig {
        epochs: training.epochs,
        ..TrainConfig::default()
    };
    cfg.set_model(&training.model)?;
    let splits = Splits::default();
    eprintln!(
        "6. training job (trusted zone): attest, receive the key, decrypt in memory, train {} for {} epoch(s), seal the model to the owner",
        cfg.model, cfg.epochs
    );
    let model_dest = workdir.join("model");
    let model_s = utf8(&model_dest)?;
    let (sealed_run, _) = job::run(
        Source::Sealed {
            dataset: sealed_s,
            broker: &opts,
            evidence: &sample,
        },
        &splits,
        &cfg,
        &Store::open(model_s, true)?,
        bars,
        &EpochBars::new(training.quiet),
    )?;

    eprintln!("7. baseline: the same job on the plaintext files (same batches, same seed)");
    let plain_dest = workdir.join("model-plaintext");
    let (plain_run, _) = job::run(
        Source::Plaintext {
            import: import(data, Format::Idx, &ImportOptions::default())?,
            owner_public: ks
                .identity_public()
                .try_into()
                .map_err(|_| Error::Bug("identity key length".into()))?,
            input: data.display().to_string(),
        },
        &splits,
        &cfg,
        &Store::open(utf8(&plain_dest)?, true)?,
        bars,
        &EpochBars::new(training.quiet),
    )?;

    eprintln!("8. owner: open the sealed model and evaluate it on the test set");
    let weights = workdir.join("model.safetensors");
    let outputs =
        blindfold_owner::open_job_outputs(&ks, model_s, Some(&report.dataset_id.to_hex()), false)?;
    let (spec, net) = blindfold_zone::job::load_model(&outputs.header, &outputs.model)?;
    io(
        &weights,
        fs::write(&weights, &model::to_safetensors(&net, &spec)?[..]),
    )?;
    let eval = blindfold_zone::eval::evaluate(&weights, data, None, "test", true)?;
    eprintln!("   anyone: check the job's training receipt with the broker's public key");
    let receipt = {
        use blindfold_protocol::receipt;
        let at = model_dest.join(receipt::RECEIPT_OBJECT);
        let jwk = blindfold_broker::public_key_jwk(&broker.dir)?;
        let key = receipt::broker_key_from_jwk(&jwk).map_err(Error::Bug)?;
        let v = receipt::verify(&io(&at, fs::read(&at))?, &key)
            .map_err(|e| Failure::new(crate::fault::Fault::Integrity, e.to_string()))?;
        (at, v.claims.audit_seq)
    };

    let served = serve_step(workdir, &ks, &broker, &weights, &receipt.0, data, &eval)?;

    eprintln!("9. attacker: flip one byte of a sealed shard in a copy; verify must refuse it");
    copy_dir(&sealed, &tampered)?;
    let shard = tampered.join(&insp.manifest.splits[0].shards[0].path);
    let mut bytes = io(&shard, fs::read(&shard))?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    io(&shard, fs::write(&shard, &bytes))?;
    let refused = match blindfold_owner::open(
        &ks,
        Store::open(tampered.to_str().unwrap_or_default(), false)?,
    )
    .and_then(|d| d.verify(&NoProgress).map_err(Error::from))
    {
        Err(e @ Error::Integrity { .. }) => e.to_string(),
        Err(e) => {
            return Err(Error::Bug(format!("tampering gave an unexpected error: {e}")).into())
        }
        Ok(_) => return Err(Error::Bug("a tampered shard verified".into()).into()),
    };
    eprintln!("   refused: {refused}");

    eprintln!("10. owner: open the sealed copy and compare with the originals");
    let t = Instant::now();
    let files = blindfold_owner::open_to_dir(&ds, &opened, false, bars)?;
    let open_s = t.elapsed().as_secs_f64();
    let mut identical = 0;
    for name in FILES {
        let got = io(&opened.join(name), fs::read(opened.join(name)))?;
        if got != original(data, name)? {
            return Err(Error::Bug(format!(
                "{name} differs from the original after a round trip"
            ))
            .into());
        }
        identical += 1;
    }

    let mb = report.plaintext_bytes as f64 / 1e6;
    println!();
    println!("blindfold demo: Fashion-MNIST, sealed end to end");
    println!("  dataset id            {}", report.dataset_id);
    println!(
        "  records               {} (train {}, test {})",
        v.records,
        insp.manifest.splits[0].records,
        insp.manifest.splits.get(1).map_or(0, |s| s.records)
    );
    println!(
        "  sealed                {:.1} MB in {:.2} s ({} shards, {} chunks, suite {}); verified in {:.2} s",
        mb,
        seal_s,
        report.shards,
        v.chunks,
        ds.manifest().suite,
        verify_s
    );
    println!(
        "  model                 {}, {} epoch(s), batch {}, lr {}, seed {}",
        cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed
    );
    println!(
        "  test accuracy         {:.2}% ({} records, owner's evaluation of the opened model)",
        eval.accuracy * 100.0,
        eval.records
    );
    println!(
        "  job time sealed       {:.2} s (key {:.3} s, decrypt {:.3} s, train {:.2} s, seal+write {:.3} s)",
        sealed_run.total_s, sealed_run.key_s, sealed_run.load_s, sealed_run.train_s, sealed_run.output_s
    );
    println!(
        "  job time plaintext    {:.2} s (read {:.3} s, train {:.2} s, seal+write {:.3} s)",
        plain_run.total_s, plain_run.load_s, plain_run.train_s, plain_run.output_s
    );
    println!(
        "  overhead              {:.3}x (one run each; `blindfold bench train` alternates runs)",
        sealed_run.total_s / plain_run.total_s
    );
    println!(
        "  same weights          {} (fingerprint for this run {})",
        if sealed_run.weights_sha256 == plain_run.weights_sha256 {
            "yes, bit-identical"
        } else {
            "NO"
        },
        crate::bench_train::fingerprint(&sealed_run.weights_sha256)
    );
    println!(
        "  opened dataset        {:.2} s, {identical}/{} files byte-identical to the originals",
        open_s,
        files.len()
    );
    println!("  tamper test           one flipped byte refused");
    println!(
        "  key broker            {} (folder {})",
        broker.url,
        broker.dir.display()
    );
    println!("  policy                sample TEE accepted for job \"demo\": NO hardware root of trust in this demo");
    println!("  key store             {}", home.display());
    println!("  sealed dataset        {}", sealed.display());
    println!(
        "  sealed model          {} (model.sealed, metrics.sealed, train.json, receipt.json)",
        model_dest.display()
    );
    println!(
        "  training receipt      {}: verified with the broker's public key (release at audit entry {}); sample TEE, so it proves nothing (`blindfold receipt verify`)",
        receipt.0.display(),
        receipt.1
    );
    println!(
        "  opened model          {} (safetensors, PyTorch layout)",
        weights.display()
    );
    println!(
        "  served model          {} (served on {} during the demo): {} test images predicted through the attested TLS key, labels identical to the owner's evaluation; usage report at audit entry {} ({} records)",
        served.model_id, served.url, served.predicted, served.usage_seq, served.usage_total
    );
    println!("  opened files          {}", opened.display());
    println!("  tampered copy         {}", tampered.display());
    println!(
        "  on a real TEE         the job runs in a SEV-SNP or TDX confidential VM, attests with"
    );
    println!("                        hardware evidence (--tee tsm) under a policy naming its measurement,");
    println!(
        "                        and the cloud operator could not read the key, records or weights"
    );
    if sealed_run.weights_sha256 != plain_run.weights_sha256 {
        return Err(
            Error::Bug("sealed and plaintext training gave different weights".into()).into(),
        );
    }
    Ok(())
}

/// What the serving step did.
struct Served {
    model_id: String,
    url: String,
    predicted: usize,
    usage_seq: u64,
    usage_total: u64,
}

/// Step 8's second half: the owner seals the opened weights as a raw file and registers
/// them with a `[serve]` table; a serving job attests and serves them; a caller checks
/// the evidence and predicts test images; the counts reach the audit log.
fn serve_step(
    workdir: &Path,
    ks: &KeyStore,
    broker: &LocalBroker,
    weights: &Path,
    receipt: &Path,
    data: &Path,
    eval: &blindfold_zone::eval::Evaluation,
) -> Result<Served, Failure> {
    use std::sync::Arc;
    const API_KEY: &str = "demo-api-key";
    const N: usize = 100;
    let sha256 = |b: &[u8]| hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b));
    eprintln!("   owner: seal the opened model as a raw file and register it to be served ([serve]: one API key, a budget)");
    let sealed = workdir.join("sealed-model");
    let sealed_s = utf8(&sealed)?;
    let imp = import(weights, Format::Raw, &ImportOptions::default())?;
    blindfold_owner::seal(
        ks,
        imp,
        &Store::open(sealed_s, true)?,
        &SealOptions::default(),
        &NoProgress,
    )?;
    let mds = blindfold_owner::open(ks, Store::open(sealed_s, false)?)?;
    let receipt_sha256 = sha256(&io(receipt, fs::read(receipt))?);
    let policy = format!(
        "tee = [\"sample\"]\njobs = [\"serve\"]\n[serve]\nreceipt_sha256 = \"{receipt_sha256}\"\nglobal_budget = 1000\n[[serve.clients]]\nname = \"demo\"\nkey_sha256 = \"{}\"\nbudget = {N}\n",
        sha256(API_KEY.as_bytes())
    );
    let model_id = broker.register(&mds, &policy)?;

    eprintln!("   serving job (trusted zone): attest, receive the model's key and rules, serve HTTPS with a TLS key bound into its evidence");
    let evidence = blindfold_attest::EvidenceSource::InsecureSample { measurement: None };
    let rel = blindfold_serve::release_model(sealed_s, &broker.fetch_options("serve"), &evidence)?;
    let reporter = rel
        .reporter
        .ok_or_else(|| Error::Bug("the local broker certified no key".into()))?;
    let tls = blindfold_serve::Tls::generate()?;
    let svc = Arc::new(blindfold_serve::Service::new(
        rel.predictor,
        rel.info,
        rel.rules,
        Some(evidence),
        tls.spki_sha256,
    )?);
    let listener = io(
        Path::new("127.0.0.1:0"),
        std::net::TcpListener::bind("127.0.0.1:0"),
    )?;
    let url = format!(
        "https://{}",
        io(Path::new("listener"), listener.local_addr())?
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Bug(e.to_string()))?;
    let broker_client = blindfold_attest::client(&broker.fetch_options("serve"))?;
    rt.spawn(blindfold_serve::report_usage(
        svc.clone(),
        reporter,
        broker_client,
        broker.url.clone(),
        std::time::Duration::from_secs(1),
    ));
    rt.spawn(async move { blindfold_serve::run(listener, &tls, svc).await });

    eprintln!("   caller: check the evidence (TEE, model id, receipt digest), then predict {N} test images over the attested key only");
    let expect = blindfold_verify::expect::Expectation::parse(&format!(
        "model = \"{model_id}\"\ntee = [\"sample\"]\nreceipt_sha256 = \"{receipt_sha256}\"\n"
    ))
    .map_err(|e| Error::Bug(e.to_string()))?;
    let test = blindfold_zone::data::Dataset::from_import(
        import(data, Format::Idx, &ImportOptions::default())?,
        &Splits {
            train: "test".into(),
            test: String::new(),
        },
        &NoProgress,
    )?;
    let width = test.schema.elements() as usize;
    let x = test.train.features(&test.schema, 0, N);
    let rows: Vec<&[f32]> = x.chunks(width).collect();
    let answer = rt.block_on(async {
        let svc = crate::predict::attest(&url, &expect).await?;
        let key = API_KEY;
        svc.predict(key, &rows).await
    })?;
    let labels: Vec<u64> = answer["predictions"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["label"].as_u64()).collect())
        .unwrap_or_default();
    let owner: Vec<u64> = eval
        .predictions
        .as_ref()
        .map(|p| {
            p.iter()
                .take(N)
                .map(|(_, l)| blindfold_zone::infer::top1(l) as u64)
                .collect()
        })
        .unwrap_or_default();
    if labels.len() != N || labels != owner {
        return Err(Error::Bug(format!(
            "the service's labels differ from the owner's evaluation: {labels:?} vs {owner:?}"
        ))
        .into());
    }
    eprintln!("   {N} labels, identical to the owner's evaluation of the same weights");
    // The service's counts reach the broker's audit log within a report period.
    let db = broker.dir.join("broker.db");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let usage = loop {
        let c = rusqlite::Connection::open(&db).map_err(|e| Error::Bug(e.to_string()))?;
        let last = blindfold_broker::audit::entries(&c)
            .map_err(|e| Error::Bug(e.to_string()))?
            .into_iter()
            .rfind(|e| e.event == "usage");
        match last {
            Some(e) if e.usage.as_ref().is_some_and(|u| u.total == N as u64) => break e,
            _ if Instant::now() > deadline => {
                return Err(Error::Bug("no usage report reached the audit log".into()).into())
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    };
    eprintln!(
        "   the broker's audit log: entry {} records {} answered records (counts only)",
        usage.seq, N
    );
    drop(rt);
    Ok(Served {
        model_id,
        url,
        predicted: N,
        usage_seq: usage.seq,
        usage_total: N as u64,
    })
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
