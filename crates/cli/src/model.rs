//! `model spec`: a spec's digest and check. `model open`, `eval`: the owner's side of a training job's outputs. Opening them is
//! the owner crate's (`open_job_outputs`), reading what they say about the model the
//! zone's (`job::load_model`, next to the code that writes it); this only wires the two.

use std::path::{Path, PathBuf};

use blindfold_dataset::SAFETENSORS_CONTENT_TYPE;
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
    /// Check a model spec and print its SHA-256: what a policy's `models` lists.
    ///
    /// Prints `SHA256  NAME` (as sha256sum prints the file's digest). With --input, also
    /// walks the layers over records of that shape, as a job does before it attests,
    /// and prints the number of parameters. docs/model-spec.md describes the format.
    Spec {
        /// A built-in model (mlp, lenet5, cnn) or a spec file (*.toml).
        #[arg(value_name = "NAME|SPEC.toml")]
        model: String,
        /// Record shape: C,H,W (1,28,28 for Fashion-MNIST; a row of N features is 1,1,N).
        #[arg(long, value_name = "C,H,W")]
        input: Option<String>,
        /// Number of classes, with --input.
        #[arg(long, default_value_t = 10, value_name = "K")]
        classes: usize,
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
    /// Also write each record's label and prediction to this CSV file: a classifier's
    /// `record,label,predicted,logit_0,...`, a regression's `record,label,predicted`
    /// (e.g. to compare with the same weights in PyTorch).
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
}

pub fn model(
    cmd: &ModelCmd,
    keystore: impl FnOnce() -> Result<KeyStore, Failure>,
) -> Result<(), Failure> {
    let (model_dest, out, format, force, dataset, danger_unauthenticated) = match cmd {
        ModelCmd::Spec {
            model,
            input,
            classes,
        } => return spec(model, input.as_deref(), *classes),
        ModelCmd::Open {
            model_dest,
            out,
            format,
            force,
            dataset,
            danger_unauthenticated,
        } => (
            model_dest,
            out,
            format,
            force,
            dataset,
            danger_unauthenticated,
        ),
    };
    let ks = &keystore()?;
    if out.exists() && !force {
        return Err(Error::OutputExists(out.display().to_string()).into());
    }
    let outputs = blindfold_owner::open_job_outputs(
        ks,
        model_dest,
        dataset.as_deref(),
        *danger_unauthenticated,
    )?;
    let source = outputs.header.source.clone();
    let metrics: Option<serde_json::Value> = outputs
        .metrics
        .map(|m| serde_json::from_slice(&m))
        .transpose()
        .map_err(|e| Error::BadInput(format!("sealed metrics: {e}")))?;
    let (bytes, what) = if outputs.header.content_type == SAFETENSORS_CONTENT_TYPE {
        // A PyTorch job's state_dict (the Python bridge): written as sealed, once it
        // parses as safetensors.
        if *format == WeightsFormat::Burnpack {
            return Err(Error::BadInput(
                "this model was trained in PyTorch: it is safetensors only (--format safetensors)"
                    .into(),
            )
            .into());
        }
        let (tensors, elements) =
            blindfold_dataset::check_safetensors(&outputs.model).map_err(Error::from)?;
        let what = format!("PyTorch state_dict, {tensors} tensors, {elements} parameters");
        (outputs.model, what)
    } else if *format == WeightsFormat::Burnpack
        && blindfold_zone::job::OutputInfo::from_header(&outputs.header)?
            .spec
            .is_none()
    {
        // A model sealed before model specs: its tensors have the old names, which no
        // spec builds; the bytes as sealed are still the owner's.
        let info = blindfold_zone::job::OutputInfo::from_header(&outputs.header)?;
        let what = format!(
            "{} for input {:?}, {} classes (sealed before model specs: Burnpack as sealed, not loaded)",
            info.model, info.input, info.classes
        );
        (outputs.model, what)
    } else {
        // Loading checks the weights against the header's architecture for either format.
        let (spec, net) = blindfold_zone::job::load_model(&outputs.header, &outputs.model)?;
        let bytes = match format {
            WeightsFormat::Burnpack => outputs.model,
            WeightsFormat::Safetensors => model::to_safetensors(&net, &spec)?,
        };
        let what = format!(
            "{} (spec sha256 {}) for input {:?}, {} classes",
            spec.name(),
            spec.spec.sha256_hex(),
            spec.input,
            spec.classes
        );
        (bytes, what)
    };
    write_file(out, &bytes, *force)?;
    eprintln!("{}: {what}", out.display());
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

fn spec(name: &str, input: Option<&str>, classes: usize) -> Result<(), Failure> {
    let s = blindfold_zone::spec::Spec::load(name)?;
    println!("{}  {}", s.sha256_hex(), s.file.name);
    if let Some(input) = input {
        let shape: Vec<usize> = input
            .split(',')
            .map(|v| v.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| Failure::bad_input(format!("--input {input:?}: C,H,W")))?;
        let shape: [usize; 3] = shape
            .try_into()
            .map_err(|_| Failure::bad_input(format!("--input {input:?}: C,H,W")))?;
        if classes < 2 {
            return Err(Failure::bad_input("--classes: at least 2"));
        }
        let plan = s.plan(shape, classes)?;
        eprintln!(
            "fits {}×{}×{} records and {classes} classes: {} parameters, {} features into the head",
            shape[0], shape[1], shape[2], plan.parameters, plan.features
        );
    }
    Ok(())
}

pub fn eval(a: &EvalArgs) -> Result<(), Failure> {
    let e = blindfold_zone::eval::evaluate(
        &a.model,
        &a.test,
        a.labels.clone(),
        &a.split,
        a.predictions.is_some(),
    )?;
    if let (Some(path), Some(p)) = (&a.predictions, &e.predictions) {
        write_predictions(path, p, e.rmse.is_some())?;
    }
    if a.json {
        let mut j = serde_json::json!({
            "model": e.spec.name(), "model_sha256": e.spec.spec.sha256_hex(),
            "records": e.records,
        });
        match e.rmse {
            Some(rmse) => {
                j["rmse"] = rmse.into();
                j["r2"] = e.r2.into();
            }
            None => {
                j["accuracy"] = e.accuracy.into();
                j["confusion"] = serde_json::json!(e.confusion);
            }
        }
        println!("{j}");
        return Ok(());
    }
    if let Some(rmse) = e.rmse {
        println!(
            "{} on {} records of {}: RMSE {rmse:.6}, R² {}",
            e.spec.name(),
            e.records,
            a.test.display(),
            e.r2.map_or("n/a (constant labels)".into(), |r| format!("{r:.4}"))
        );
        return Ok(());
    }
    println!(
        "{} on {} records of {}: accuracy {:.2}%",
        e.spec.name(),
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

/// Writes `eval --predictions`: through the owner's output set (a temporary file synced,
/// then renamed), refusing to replace a file. A classifier's rows carry the logits; a
/// regression's the predicted value. Floats in their shortest round-trip form.
fn write_predictions(path: &Path, p: &[(f32, Vec<f32>)], regression: bool) -> Result<(), Failure> {
    use std::fmt::Write;
    let k = p.first().map_or(0, |(_, l)| l.len());
    let mut text = String::from("record,label,predicted");
    if !regression {
        for j in 0..k {
            let _ = write!(text, ",logit_{j}");
        }
    }
    text.push('\n');
    for (i, (label, out)) in p.iter().enumerate() {
        if regression {
            let _ = writeln!(
                text,
                "{i},{label:?},{:?}",
                out.first().copied().unwrap_or(0.0)
            );
            continue;
        }
        let predicted = blindfold_zone::infer::top1(out);
        let _ = write!(text, "{i},{label},{predicted}");
        for v in out {
            let _ = write!(text, ",{v:?}");
        }
        text.push('\n');
    }
    write_file(path, text.as_bytes(), false)
}

/// Writes one of the owner's plaintext files through the owner's output set: a
/// temporary file (0600) synced, then renamed; an existing file is replaced only with
/// `force`.
fn write_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), Failure> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput(format!("{}: not a file name", path.display())))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut set = OutputSet::new(dir, force)?;
    let h = set.create(name)?;
    set.write(h, bytes)?;
    set.commit()?;
    Ok(())
}
