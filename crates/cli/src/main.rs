//! `blindfold`: train models in an untrusted cloud on data the cloud never sees.
//!
//! This binary only parses arguments, draws progress and wires the crates together.
#![forbid(unsafe_code)]

mod bench_broker;
mod bench_gpu;
mod bench_serve;
mod bench_train;
mod broker;
mod demo;
mod fault;
mod local_broker;
mod model;
mod predict;
mod receipt;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use blindfold_format::{Suite, MANIFEST_NAME};
use blindfold_owner::import::{Format, ImportOptions};
use blindfold_owner::{Error, KeyStore, SealOptions};
use blindfold_store::Store;
use clap::{Args, Parser, Subcommand, ValueEnum};
pub use fault::{Failure, Fault};
use zeroize::Zeroizing;

use blindfold_job::Bars;

/// `train --help`'s epilogue.
fn train_after_help() -> String {
    format!(
        "Examples:\n  blindfold train --dataset ./sealed --broker https://broker:8443 --ca-cert broker.pem \\\n      --job fmnist --model cnn --epochs 2 --out ./model\n  blindfold train --plaintext /usr/share/datasets/fashion-mnist --owner-key HEX --model lenet5 --out ./model-plain\n\nExit status {}: {}; `blindfold --help` lists the others.",
        Fault::Denied.code(),
        Fault::Denied.meaning()
    )
}

/// The top-level `--help` epilogue; its exit-status table comes from [`Fault`].
fn after_help() -> String {
    format!(
        "\
Where things live:
  Owner keys      $BLINDFOLD_HOME (default ~/.blindfold): a master key, the owner's
                  HPKE identity, and each dataset's key wrapped under the master key.
  Sealed data     DEST: a local folder, file:///path, or s3://bucket/prefix (S3 settings
                  from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
                  AWS_REGION, AWS_ALLOW_HTTP). Safe to keep in storage you do not trust.

{}
The sealed format is specified in docs/sealed-format.md; what it protects against is
in docs/threat-model.md.",
        blindfold_job::exit_table(&blindfold_job::Fault::ALL)
    )
}

/// Train models in an untrusted cloud on data the cloud never sees.
///
/// The data owner seals a dataset into encrypted, tamper-evident shards that can sit in
/// any storage. Only the owner's key store (and, later, a training job that proves by
/// remote attestation that it runs the expected code) can read them.
#[derive(Parser)]
#[command(name = "blindfold", version, after_help = after_help(), max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
struct Global {
    /// The owner's key-store folder.
    #[arg(long, global = true, env = "BLINDFOLD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Read the key-store passphrase from this file (else from $BLINDFOLD_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Print no progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or show the owner's key store.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Encrypt a dataset into sealed shards at DEST.
    ///
    /// INPUT is a folder of IDX files (e.g. /usr/share/datasets/fashion-mnist: every
    /// <prefix>-images-idx3-ubyte[.gz] with its <prefix>-labels-idx1-ubyte[.gz]; the
    /// prefix names the split, t10k becomes test), an IDX images file (with --labels),
    /// a CSV file with a header row, a NumPy .npy file, or any file with --format raw.
    ///
    /// A fresh random key is made for the dataset and stored, wrapped, in the key store.
    /// Nothing is published until every shard is written: on error, what was written is
    /// removed. Prints the dataset id.
    #[command(
        after_help = "Examples:\n  blindfold seal /usr/share/datasets/fashion-mnist --out ./sealed\n  blindfold seal table.csv --label-column target --out s3://bucket/tables/t1\n  blindfold seal backup.tar --format raw --out ./sealed-backup"
    )]
    Seal(SealArgs),
    /// Decrypt a sealed dataset back into its original files (owner only).
    ///
    /// IDX inputs come back as uncompressed IDX files named like the inputs without .gz,
    /// byte-identical to the decompressed originals; raw and .npy inputs come back byte
    /// for byte; CSV comes back with the same columns and values. Every chunk is verified
    /// before any file appears in DIR.
    Open(OpenArgs),
    /// Show what a sealed dataset says about itself, without any key.
    ///
    /// Nothing shown is authenticated: use `verify` for that.
    Inspect(InspectArgs),
    /// Check every shard, chunk and the manifest with the dataset key; write nothing.
    Verify(VerifyArgs),
    /// The key broker: run it, register datasets, read its audit log, fetch a key.
    ///
    /// The broker runs on the owner's premises and releases a dataset's key only to a
    /// job that proves by remote attestation (SEV-SNP, TDX) that it runs the expected
    /// code, under the owner's per-dataset policy. Protocol: docs/broker-protocol.md.
    #[command(subcommand)]
    Broker(broker::BrokerCmd),
    /// Measure throughput next to the machine's limits.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Train a model inside the trusted zone on a sealed dataset (the cloud's side).
    ///
    /// The job proves by attestation to the owner's key broker that it runs the expected
    /// code, receives the dataset key encrypted to an ephemeral key of its own, checks
    /// the manifest against the version and digest the owner registered, decrypts the
    /// records into memory only, trains with Burn on the CPU, and writes the weights and
    /// metrics sealed to the owner's public key (which the sealed dataset names). Core
    /// dumps are disabled for the process. A tampered chunk stops the job with an error
    /// naming the shard and chunk.
    ///
    /// With --plaintext INPUT the same pipeline runs on the owner's unsealed files: the
    /// baseline. Same seed, same data: bit-identical weights.
    #[command(after_help = train_after_help())]
    Train(Box<blindfold_job::TrainArgs>),
    /// The owner's side of a trained model.
    #[command(subcommand)]
    Model(model::ModelCmd),
    /// Training receipts: check, offline, what a training job signed about its model.
    #[command(subcommand)]
    Receipt(receipt::ReceiptCmd),
    /// Evaluate opened weights on a plaintext test set: accuracy and confusion matrix (RMSE and R² for a regression model).
    Eval(model::EvalArgs),
    /// Serve predictions of a sealed model inside the trusted zone: attest, receive the model's key and the owner's serving rules, answer over HTTPS with a TLS key bound into the evidence (what `blindfold-serve` runs).
    #[command(after_help = "Example:
  blindfold serve --model ./sealed-model --broker https://broker:8443 --ca-cert broker.pem --listen 0.0.0.0:8444")]
    Serve(Box<blindfold_serve::ServeArgs>),
    /// Predict with a served model: check the service's evidence against your expectations first, then send the records only to the attested TLS key.
    #[command(after_help = "Example:
  blindfold predict --service https://10.0.0.5:8444 --expect expect.toml --labels t10k-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz --limit 10

expect.toml:
  model = \"<the sealed model's id>\"
  tee = [\"snp\"]
  measurements = [\"<launch measurement of the serving image>\"]
  [snp]
  min_bootloader = 3
  min_tee = 0
  min_snp = 8
  min_microcode = 115")]
    Predict(predict::PredictArgs),
    /// Run the whole story on Fashion-MNIST, end to end, in a scratch folder.
    ///
    /// Creates a key store, seals Fashion-MNIST (installing Debian's
    /// dataset-fashion-mnist package if it is missing and this user may), verifies the
    /// sealed copy, starts a local key broker and registers the dataset under a policy
    /// that accepts the sample TEE (and says so), trains a model as a job in the trusted
    /// zone would (key by attestation, records decrypted in memory, model sealed to the
    /// owner), runs the same training on the plaintext files, opens and evaluates the
    /// model as the owner, serves it from a sealed copy (attested, TLS key bound into the
    /// evidence) to a client that checks the evidence before it predicts, shows a
    /// tampered shard refused, and prints a table: accuracy, time sealed vs plaintext,
    /// and where every artifact is.
    Demo(DemoArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key store: a master key and an HPKE (X25519) identity for receiving
    /// sealed models. Files are 0600. With --passphrase, the master key is wrapped under
    /// Argon2id of a passphrase read from --passphrase-file or $BLINDFOLD_PASSPHRASE.
    Init {
        /// Protect the master key with a passphrase.
        #[arg(long)]
        passphrase: bool,
    },
    /// Print the identity public key and the datasets the key store holds keys for.
    Show,
    /// Rewrite dataset records an older blindfold wrote, whose version and digest were
    /// not authenticated: each is rewritten only if the manifest at its location opens
    /// with its key and is exactly the version and digest it records.
    Upgrade,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Idx,
    Csv,
    Npy,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum SuiteArg {
    #[value(name = "aes-256-gcm")]
    Aes,
    #[value(name = "chacha20-poly1305")]
    Chacha,
}

#[derive(Args)]
struct SealArgs {
    /// The dataset: a folder of IDX files, a file, or a file with --format raw.
    input: PathBuf,
    /// Where the sealed dataset goes: a folder, file:///path or s3://bucket/prefix.
    #[arg(long, value_name = "DEST")]
    out: String,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: FormatArg,
    /// Labels file: IDX labels for an IDX images file, a 1-D .npy for a .npy file.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// CSV: the column holding integer labels (default "label", if present).
    #[arg(long, value_name = "NAME")]
    label_column: Option<String>,
    /// Split name for a single-file input (default "data", or from an IDX file name).
    #[arg(long, value_name = "NAME")]
    split: Option<String>,
    /// AEAD suite.
    #[arg(long, value_enum, default_value = "aes-256-gcm")]
    suite: SuiteArg,
    /// Plaintext MiB per shard.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    shard_size: u64,
    /// Publish a new version of the dataset already at DEST, under the same key.
    #[arg(long)]
    update: bool,
}

#[derive(Args)]
struct OpenArgs {
    /// The sealed dataset.
    dest: String,
    /// Folder for the original files.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace files that already exist in DIR.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The sealed dataset.
    dest: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The sealed dataset.
    dest: String,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Train the same model from sealed and from plaintext Fashion-MNIST, alternating
    /// runs, each a whole job (key from a local broker, decryption, training, sealed
    /// outputs). Reports the job times side by side, accuracy, and whether the weights
    /// are bit-identical. The last line is JSON.
    Train(bench_train::BenchTrainArgs),
    /// Prediction throughput and latency of a sealed, attested service against the same model served from plaintext without attestation, side by side in one run; prints one JSON line.
    Serve(bench_serve::BenchServeArgs),
    /// Decrypt Fashion-MNIST's sealed training split on the GPU and copy the same bytes
    /// device to device, both timed in this run; then train the same model on the GPU
    /// from the sealed copy (decrypted on the device) and from plaintext, alternating.
    /// Needs a binary built with `--features cuda` (or `wgpu`). The last line is JSON:
    /// decrypt_gbps, copy_gbps, sealed_s, plaintext_s, overhead, identical_weights.
    Gpu(bench_gpu::BenchGpuArgs),
    /// Start a broker on loopback and run N concurrent clients through auth -> attest ->
    /// resource (sample evidence) for S seconds; then repeat while killing the broker
    /// with SIGKILL half-way, restart it, and check the audit log against the releases
    /// clients saw. The last line is JSON.
    Broker {
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of load per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Seal and open a random raw file; print throughput next to raw AES-256-GCM, a plain
    /// copy and the age CLI, all measured in this run. The last line is JSON.
    Seal {
        /// Input size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Scratch folder (needs about 4x the size free).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Rounds (median reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Scratch folder for the demo's key store and artifacts (replaced if a previous
    /// demo made it).
    #[arg(long, default_value = "blindfold-demo")]
    workdir: PathBuf,
    /// Where Fashion-MNIST's IDX files are.
    #[arg(long, default_value = demo::FASHION_MNIST)]
    data: PathBuf,
    /// Model the demo trains: built in (mlp, lenet5, cnn) or a spec file (*.toml).
    #[arg(long, default_value = "lenet5", value_name = "NAME|SPEC.toml")]
    model: String,
    /// Epochs the demo trains (LeNet-5: about 20 s each here).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
}

fn main() -> ExitCode {
    blindfold_job::init_logging();
    let cli = Cli::parse();
    blindfold_job::finish("blindfold", run(cli).map_err(|f| f.0))
}

fn home(g: &Global) -> PathBuf {
    g.home.clone().unwrap_or_else(blindfold_owner::default_home)
}

fn passphrase(g: &Global) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
    if let Some(f) = &g.passphrase_file {
        let s = std::fs::read(f).map_err(|e| Error::BadInput(format!("{}: {e}", f.display())))?;
        let s = Zeroizing::new(s);
        let trimmed = s.strip_suffix(b"\n").unwrap_or(&s);
        return Ok(Some(Zeroizing::new(trimmed.to_vec())));
    }
    Ok(std::env::var_os("BLINDFOLD_PASSPHRASE").map(|p| Zeroizing::new(p.into_encoded_bytes())))
}

fn open_keystore(g: &Global) -> Result<KeyStore, Error> {
    let p = passphrase(g)?;
    KeyStore::open(&home(g), p.as_deref().map(|v| &v[..]))
}

fn run(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    let bars = Bars::new(g.quiet);
    match cli.command {
        Cmd::Train(a) => return Ok(blindfold_job::train(&a, &bars, g.quiet)?),
        Cmd::Model(m) => return model::model(&m, || open_keystore(g).map_err(Failure::from)),
        Cmd::Eval(a) => return model::eval(&a),
        Cmd::Serve(a) => return Ok(blindfold_serve::serve(&a)?),
        Cmd::Predict(a) => return Ok(predict::run(&a)?),
        Cmd::Receipt(r) => return receipt::run(&r),
        Cmd::Bench(BenchCmd::Train(a)) => return bench_train::run(&a, &bars, g.quiet),
        Cmd::Bench(BenchCmd::Gpu(a)) => return bench_gpu::run(&a, &bars, g.quiet),
        Cmd::Bench(BenchCmd::Serve(a)) => return bench_serve::run(&a),
        other => run_owner(other, g, &bars)?,
    }
    Ok(())
}

fn run_owner(cmd: Cmd, g: &Global, bars: &Bars) -> Result<(), Failure> {
    match cmd {
        Cmd::Keys(KeysCmd::Init { passphrase: want }) => {
            let p = if want {
                Some(passphrase(g)?.ok_or_else(|| {
                    Error::BadInput(
                        "--passphrase needs --passphrase-file or $BLINDFOLD_PASSPHRASE".into(),
                    )
                })?)
            } else {
                None
            };
            let ks = KeyStore::init(&home(g), p.as_deref().map(|v| &v[..]))?;
            println!("created key store {}", ks.home().display());
            println!(
                "identity (X25519, HPKE): {}",
                hex::encode(ks.identity_public())
            );
        }
        Cmd::Keys(KeysCmd::Upgrade) => {
            let ks = open_keystore(g)?;
            for u in ks.upgrade_records()? {
                match u.outcome {
                    Ok(v) => println!(
                        "{}  upgraded (version {v} confirmed by its manifest)",
                        u.dataset_id
                    ),
                    Err(why) => println!("{}  left alone: {why}", u.dataset_id),
                }
            }
        }
        Cmd::Keys(KeysCmd::Show) => {
            let ks = open_keystore(g)?;
            println!("key store: {}", ks.home().display());
            println!(
                "identity (X25519, HPKE): {}",
                hex::encode(ks.identity_public())
            );
            let ds = ks.datasets()?;
            println!("datasets: {}", ds.len());
            for d in ds {
                println!(
                    "  {}  v{}  {}  {}",
                    d.dataset_id, d.version, d.suite, d.location
                );
            }
        }
        Cmd::Seal(a) => {
            let ks = open_keystore(g)?;
            let format = match a.format {
                FormatArg::Auto => Format::Auto,
                FormatArg::Idx => Format::Idx,
                FormatArg::Csv => Format::Csv,
                FormatArg::Npy => Format::Npy,
                FormatArg::Raw => Format::Raw,
            };
            if let Some(s) = &a.split {
                if !blindfold_format::valid_split_name(s) {
                    return Err(Error::BadInput(format!(
                        "--split {s:?}: use 1-32 characters from a-z 0-9 _ -"
                    ))
                    .into());
                }
            }
            if a.shard_size == 0 {
                return Err(Error::BadInput("--shard-size must be at least 1 MiB".into()).into());
            }
            let opts = ImportOptions {
                labels: a.labels,
                label_column: a.label_column,
                split: a.split,
            };
            let imp = blindfold_owner::import::import(&a.input, format, &opts)?;
            let store = Store::open(&a.out, true)?;
            let seal_opts = SealOptions {
                suite: match a.suite {
                    SuiteArg::Aes => Suite::Aes256Gcm,
                    SuiteArg::Chacha => Suite::ChaCha20Poly1305,
                },
                shard_bytes: a.shard_size << 20,
                update: a.update,
                ..SealOptions::default()
            };
            let r = blindfold_owner::seal(&ks, imp, &store, &seal_opts, bars)?;
            eprintln!(
                "sealed {} records in {} splits ({}) into {} shards at {}, version {}",
                r.splits.iter().map(|s| s.1).sum::<u64>(),
                r.splits.len(),
                r.splits
                    .iter()
                    .map(|(n, c)| format!("{n}: {c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.shards,
                a.out,
                r.version
            );
            if r.leftovers_removed > 0 {
                eprintln!(
                    "removed {} shard objects the new manifest does not list (an earlier \
                     version's, or left by an interrupted seal)",
                    r.leftovers_removed
                );
            }
            println!("{}", r.dataset_id);
        }
        Cmd::Open(a) => {
            let ks = open_keystore(g)?;
            let ds = blindfold_owner::open(&ks, Store::open(&a.dest, false)?)?;
            let files = blindfold_owner::open_to_dir(&ds, &a.out, a.force, bars)?;
            for f in files {
                println!("{}", f.display());
            }
        }
        Cmd::Inspect(a) => inspect(&a)?,
        Cmd::Verify(a) => {
            let ks = open_keystore(g)?;
            let ds = blindfold_owner::open(&ks, Store::open(&a.dest, false)?)?;
            let r = ds.verify(bars)?;
            println!(
                "ok: dataset {} version {}: manifest, {} shards, {} chunks, {} records authenticated",
                ds.manifest().dataset_id,
                ds.manifest().version,
                r.shards,
                r.chunks,
                r.records
            );
        }
        Cmd::Bench(BenchCmd::Broker { clients, seconds }) => {
            let v = bench_broker::run(clients.max(1), seconds.max(1.0), &mut |l| eprintln!("{l}"))?;
            println!("{v}");
        }
        Cmd::Bench(BenchCmd::Seal {
            size_mib,
            dir,
            rounds,
        }) => {
            let opts = blindfold_owner::bench::SealBenchOptions {
                size: size_mib << 20,
                dir,
                rounds,
                suite: Suite::Aes256Gcm,
            };
            let r = blindfold_owner::bench::seal_bench(&opts, &mut |l| eprintln!("{l}"))?;
            let limit = r.copy_gbps.min(r.aead_gbps * r.cores as f64);
            eprintln!(
                "seal {:.2} GB/s ({:.0}% of the limit {:.2}), open {:.2} GB/s ({:.0}%); age: {} / {}",
                r.seal_gbps,
                100.0 * r.seal_gbps / limit,
                limit,
                r.open_gbps,
                100.0 * r.open_gbps / limit,
                r.age_encrypt_gbps.map_or("n/a".into(), |v| format!("{:.1}x", r.seal_gbps / v)),
                r.age_decrypt_gbps.map_or("n/a".into(), |v| format!("{:.1}x", r.open_gbps / v)),
            );
            println!(
                "{}",
                serde_json::to_string(&r).map_err(|e| Error::Bug(e.to_string()))?
            );
        }
        Cmd::Demo(a) => demo::run(
            &a.workdir,
            &a.data,
            &demo::DemoTraining {
                model: a.model.clone(),
                epochs: a.epochs,
                quiet: g.quiet,
            },
            bars,
        )?,
        Cmd::Broker(b) => broker::run(b, || open_keystore(g).map_err(Failure::from))?,
        Cmd::Train(_)
        | Cmd::Model(_)
        | Cmd::Eval(_)
        | Cmd::Serve(_)
        | Cmd::Predict(_)
        | Cmd::Receipt(_)
        | Cmd::Bench(BenchCmd::Train(_))
        | Cmd::Bench(BenchCmd::Gpu(_))
        | Cmd::Bench(BenchCmd::Serve(_)) => {
            unreachable!("dispatched in run")
        }
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<(), Failure> {
    let store = Store::open(&a.dest, false)?;
    let i = blindfold_owner::inspect(&store)?;
    let m = &i.manifest;
    if a.json {
        let shards: Vec<_> = i
            .shards
            .iter()
            .map(|s| {
                serde_json::json!({
                    "split": s.split, "index": s.entry.index, "path": s.entry.path,
                    "records": s.entry.records, "size": s.entry.size, "found_size": s.found_size,
                    "header_sha256": hex::encode(s.entry.header_sha256),
                    "header": match &s.header { Ok(_) => "parsed".to_string(), Err(e) => e.clone() },
                })
            })
            .collect();
        let v = serde_json::json!({
            "authenticated": false,
            "dataset_id": m.dataset_id.to_hex(), "version": m.version, "suite": m.suite.name(),
            "commitment": hex::encode(m.commitment), "manifest_sha256": hex::encode(i.manifest_sha256),
            "schema": m.schema, "records_per_chunk": m.records_per_chunk,
            "splits": m.splits.iter().map(|s| serde_json::json!({"name": s.name, "records": s.records})).collect::<Vec<_>>(),
            "sealed_metadata_bytes": m.metadata_len(),
            "shards": shards,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::Bug(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{} (NOT authenticated: inspect uses no key; run `blindfold verify`)",
        Path::new(&a.dest).join(MANIFEST_NAME).display()
    );
    println!("  dataset id       {}", m.dataset_id);
    println!("  version          {}", m.version);
    println!("  suite            {}", m.suite);
    println!("  key commitment   {}", hex::encode(m.commitment));
    println!("  manifest sha256  {}", hex::encode(i.manifest_sha256));
    let shape = if m.schema.shape.is_empty() {
        "scalar".to_string()
    } else {
        m.schema
            .shape
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join("x")
    };
    println!(
        "  records          {} {}, label {}, {} bytes each, {} per chunk",
        m.schema.dtype,
        shape,
        m.schema.label.map_or("none".to_string(), |l| l.to_string()),
        m.schema.record_size(),
        m.records_per_chunk
    );
    println!(
        "  sealed metadata  {} bytes (file names etc., encrypted)",
        m.metadata_len()
    );
    for s in &m.splits {
        println!(
            "  split {:<10} {} records in {} shards",
            s.name,
            s.records,
            s.shards.len()
        );
    }
    for s in &i.shards {
        let state = match (s.found_size, &s.header) {
            (None, _) => "MISSING".to_string(),
            (Some(f), _) if f != s.entry.size => format!("SIZE {f} != listed {}", s.entry.size),
            (Some(_), Err(e)) => format!("BAD HEADER: {e}"),
            (Some(_), Ok(h)) => format!("present, {} chunks", h.chunk_count()),
        };
        println!(
            "    {}  {} records, {} bytes  {}",
            s.entry.path, s.entry.records, s.entry.size, state
        );
    }
    Ok(())
}
