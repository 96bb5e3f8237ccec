//! `model open`, `eval`: the owner's side of a training job's outputs. Opening them is
//! the owner crate's (`open_job_outputs`), reading what they say about the model the
//! zone's (`job::load_model`, next to the code that writes it); this only wires the two.

use std::path::{Path, PathBuf};

use blindfold_job::epoch_line;
use blindfold_owner::export::OutputSet;
use blindfold_owner::{Error, KeyStore};
use blindfold_zone::model;
use blindfold_zone::train::EpochMetrics;
use clap::{Args, Subcommand, ValueEnum};

use crate::Failure;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Decrypt a sealed model with the owner's key store (owner only).
    ///
    /// Writes the weights as safetensors in PyTorch's layout (loads in PyTorch with
    /// `safetensors.torch.load_file`, and in Burn), or as Burnpack, exactly the bytes the
    /// job sealed. Prints the sealed metrics.
    Open {
        /// Where the job wrote its outputs.
        model_dest: String,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Weights format.
        #[arg(long, value_enum, default_value = "safetensors")]
        format: WeightsFormat,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
        /// The dataset id the model was trained on (printed by `seal`). A model is
        /// accepted only if that dataset's key sealed it: the key of another dataset in
        /// your key store (one whose key a sample-TEE policy released, say) does not do.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "danger_unauthenticated"
        )]
        dataset: Option<String>,
        /// Open an output that no dataset key authenticates: the plaintext baseline's
        /// (`train --plaintext`). Anyone who knows your public key can write such an
        /// output; use this only for a baseline you ran yourself.
        #[arg(long)]
        danger_unauthenticated: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WeightsFormat {
    /// safetensors, PyTorch layout, with the architecture in its metadata.
    Safetensors,
    /// Burn's Burnpack, as sealed.
    Burnpack,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Weights from `blindfold model open` (safetensors).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Test data: an IDX folder or file, CSV or .npy, as `seal` reads it.
    #[arg(long, value_name = "INPUT")]
    test: PathBuf,
    /// Labels file for a single IDX images file or .npy.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Which split of INPUT to evaluate.
    #[arg(long, default_value = "test", value_name = "NAME")]
    split: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn model(cmd: &ModelCmd, ks: &KeyStore) -> Result<(), Failure> {
    let ModelCmd::Open {
        model_dest,
        out,
        format,
        force,
        dataset,
        danger_unauthenticated,
    } = cmd;
    if out.exists() && !force {
        return Err(Error::OutputExists(out.display().to_string()).into());
    }
    let outputs = blindfold_owner::open_job_outputs(
        ks,
        model_dest,
        dataset.as_deref(),
        *danger_unauthenticated,
    )?;
    // Loading checks the weights against the header's architecture for either format.
    let (spec, net) = blindfold_zone::job::load_model(&outputs.header, &outputs.model)?;
    let source = outputs.header.source.clone();
    let weights = outputs.model;
    let metrics: Option<serde_json::Value> = outputs
        .metrics
        .map(|m| serde_json::from_slice(&m))
        .transpose()
        .map_err(|e| Error::BadInput(format!("sealed metrics: {e}")))?;
    let bytes = match format {
        WeightsFormat::Burnpack => weights,
        WeightsFormat::Safetensors => model::to_safetensors(&net, &spec)?,
    };
    // Through the owner's output set: a temporary file (0600) synced, then renamed.
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput(format!("{}: not a file name", out.display())))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut set = OutputSet::new(dir, *force)?;
    let h = set.create(name)?;
    set.write(h, &bytes)?;
    set.commit()?;
    eprintln!(
        "{}: {} for input {:?}, {} classes",
        out.display(),
        spec.arch,
        spec.input,
        spec.classes
    );
    match &source {
        Some(s) => eprintln!(
            "  trained on dataset {} version {} (manifest {}), authenticated by its key",
            s.dataset_id, s.version, s.manifest_sha256
        ),
        None => eprintln!("  WARNING: unauthenticated output (a plaintext baseline's): nothing shows who wrote it"),
    }
    if let Some(m) = metrics {
        if let Some(epochs) = m.get("epochs").and_then(|e| e.as_array()) {
            for e in epochs {
                if let Ok(e) = serde_json::from_value::<EpochMetrics>(e.clone()) {
                    eprintln!("  {}", epoch_line(&e));
                }
            }
        }
        println!(
            "{}",
            serde_json::to_string(&m).map_err(|e| Error::Bug(e.to_string()))?
        );
    }
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<(), Failure> {
    let e = blindfold_zone::eval::evaluate(&a.model, &a.test, a.labels.clone(), &a.split)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": e.spec.arch.name(), "records": e.records,
                "accuracy": e.accuracy, "confusion": e.confusion,
            })
        );
        return Ok(());
    }
    println!(
        "{} on {} records of {}: accuracy {:.2}%",
        e.spec.arch,
        e.records,
        a.test.display(),
        e.accuracy * 100.0
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    let w = e
        .confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(3);
    print!("{:>5}", "");
    for j in 0..e.confusion.len() {
        print!(" {j:>w$}");
    }
    println!();
    for (i, row) in e.confusion.iter().enumerate() {
        print!("{i:>5}");
        for v in row {
            print!(" {v:>w$}");
        }
        println!();
    }
    Ok(())
}
