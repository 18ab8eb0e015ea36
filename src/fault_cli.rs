//! `wasmpod fault add|ls|rm`: injects and removes network faults in a running pod over its
//! control socket (the fields are those of a spec's `[[faults]]` table; the pod checks them).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wasmpod::control::{Request, Response};

#[derive(Subcommand)]
pub enum FaultCommand {
    /// Inject a fault on the links to a target, e.g. `--to db:5432 --kind latency --latency 200ms`.
    Add(Box<AddArgs>),
    /// List the pod's faults.
    Ls {
        pod: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a fault: `wasmpod fault rm [POD] ID`.
    #[command(override_usage = "wasmpod fault rm [POD] <ID>")]
    Rm {
        #[arg(value_name = "ID", num_args = 1..=2, required = true)]
        words: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddArgs {
    /// The pod (optional when only one runs).
    pod: Option<String>,
    /// `CONTAINER:PORT`, `PORT` or, outside the pod, `HOST:PORT`.
    #[arg(long)]
    to: String,
    /// latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data, down, loss.
    #[arg(long)]
    kind: String,
    /// Only links opened by this container.
    #[arg(long)]
    from: Option<String>,
    /// upstream, downstream or both (default).
    #[arg(long)]
    direction: Option<String>,
    /// Probability that a link is affected (default 1).
    #[arg(long)]
    toxicity: Option<String>,
    #[arg(long)]
    latency: Option<String>,
    #[arg(long)]
    jitter: Option<String>,
    /// Bytes per second (bandwidth).
    #[arg(long)]
    rate: Option<String>,
    #[arg(long)]
    delay: Option<String>,
    #[arg(long)]
    timeout: Option<String>,
    #[arg(long)]
    bytes: Option<String>,
    #[arg(long)]
    average_size: Option<String>,
    #[arg(long)]
    size_variation: Option<String>,
    #[arg(long)]
    probability: Option<String>,
    #[arg(long)]
    json: bool,
}

pub fn fault(command: FaultCommand) -> ExitCode {
    let (pod, request, json) = match command {
        FaultCommand::Add(add) => {
            let AddArgs {
                pod,
                to,
                kind,
                from,
                direction,
                toxicity,
                latency,
                jitter,
                rate,
                delay,
                timeout,
                bytes,
                average_size,
                size_variation,
                probability,
                json,
            } = *add;
            let optional = [
                ("from", from),
                ("direction", direction),
                ("toxicity", toxicity),
                ("latency", latency),
                ("jitter", jitter),
                ("rate", rate),
                ("delay", delay),
                ("timeout", timeout),
                ("bytes", bytes),
                ("average_size", average_size),
                ("size_variation", size_variation),
                ("probability", probability),
            ];
            let mut fields = vec![("to".to_string(), to), ("kind".to_string(), kind)];
            fields.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))));
            // The request is one line of words: a value with a space could not travel.
            if let Some((k, _)) = fields
                .iter()
                .find(|(_, v)| v.is_empty() || v.contains(char::is_whitespace))
            {
                return super::fail(format!("--{k}: the value must be one word"));
            }
            (pod, Request::FaultAdd { fields }, json)
        }
        FaultCommand::Ls { pod, json } => (pod, Request::FaultList, json),
        FaultCommand::Rm { mut words, json } => {
            let id_word = words.pop().unwrap_or_default();
            let Ok(id) = id_word.parse::<u64>() else {
                return super::fail(format!("{id_word:?} is not a fault id (see `wasmpod fault ls`)"));
            };
            (words.pop(), Request::FaultRemove { id }, json)
        }
    };
    let removing = matches!(request, Request::FaultRemove { .. });
    super::print_replies(pod.as_deref(), &request, json, |reply| match reply {
        Response::Fault { id, fault } if removing => super::out(&format!("removed {id}: {fault}")),
        Response::Fault { id, fault } => super::out(&format!("{id}\t{fault}")),
        _ => true,
    })
}
