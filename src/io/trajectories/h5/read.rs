//! Reading a dump back: the whole of it into memory ([`read_trajectories`]) or only what a summary needs
//! ([`read_summary`]), with the list of its datasets.

use super::{h5err, open_read, read_attributes, read_column, Columns};
use crate::error::Result;
use crate::io::trajectories::summary::{summarise, SampleColumns};
use crate::io::trajectories::{DatasetInfo, Trajectories, TrajectorySummary};
use hdf5::File;
use std::path::Path;

fn describe_filter(f: &hdf5::filters::Filter) -> String {
    use hdf5::filters::Filter;
    match f {
        Filter::Deflate(level) => format!("deflate({level})"),
        Filter::Shuffle => "shuffle".to_owned(),
        Filter::Fletcher32 => "fletcher32".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn list_datasets(file: &File, path: &Path) -> Result<Vec<DatasetInfo>> {
    let mut out = Vec::new();
    for name in file.member_names().map_err(|e| h5err(path, "listing members", e))? {
        let info = match file.dataset(&name) {
            Ok(ds) => DatasetInfo {
                dtype: ds.dtype().and_then(|t| t.to_descriptor()).map(|d| d.to_string()).unwrap_or_else(|_| "?".into()),
                shape: ds.shape(),
                chunk: ds.chunk(),
                filters: ds.filters().iter().map(describe_filter).collect(),
                name,
            },
            Err(_) => {
                DatasetInfo { dtype: "(not a dataset)".into(), shape: vec![], chunk: None, filters: vec![], name }
            }
        };
        out.push(info);
    }
    Ok(out)
}

pub(in crate::io::trajectories) fn read_trajectories(path: &Path) -> Result<Trajectories> {
    let file = open_read(path)?;
    let (format_version, arbor_version, config, attributes) = read_attributes(&file, path)?;
    let c = Columns::open(&file, path)?;
    let (prompt_offsets, response_offsets) = c.complete_offsets(path)?;
    let n = prompt_offsets.len() - 1;
    let (np, nr) = (prompt_offsets[n] as usize, response_offsets[n] as usize);
    fn cut<T>(mut v: Vec<T>, len: usize) -> Vec<T> {
        v.truncate(len);
        v
    }
    Ok(Trajectories {
        format_version,
        arbor_version,
        config,
        attributes,
        step: cut(read_column(&c.step, path, "step")?, n),
        policy_version: cut(read_column(&c.policy_version, path, "policy_version")?, n),
        prompt_id: cut(read_column(&c.prompt_id, path, "prompt_id")?, n),
        sample_index: cut(read_column(&c.sample_index, path, "sample_index")?, n),
        reward: cut(read_column(&c.reward, path, "reward")?, n),
        prompt_offsets,
        response_offsets,
        prompt_tokens: cut(read_column(&c.prompt_tokens, path, "prompt_tokens")?, np),
        response_tokens: cut(read_column(&c.response_tokens, path, "response_tokens")?, nr),
        behav_logp: cut(read_column(&c.behav_logp, path, "behav_logp")?, nr),
        logp: cut(read_column(&c.logp, path, "logp")?, nr),
        advantages: cut(read_column(&c.advantages, path, "advantages")?, nr),
        branch_parent: cut(read_column(&c.branch_parent, path, "branch_parent")?, n),
        branch_token: cut(read_column(&c.branch_token, path, "branch_token")?, n),
        step_index: cut(read_column(&c.step_index, path, "step_index")?, nr),
        fci: cut(read_column(&c.fci, path, "fci")?, nr),
        waad: cut(read_column(&c.waad, path, "waad")?, nr),
        fai: cut(read_column(&c.fai, path, "fai")?, nr),
    })
}

pub(in crate::io::trajectories) fn read_summary(path: &Path) -> Result<TrajectorySummary> {
    let file = open_read(path)?;
    let (format_version, arbor_version, _, attributes) = read_attributes(&file, path)?;
    let c = Columns::open(&file, path)?;
    let (po, ro) = c.complete_offsets(path)?;
    let n = po.len() - 1;
    let rows = c.per_sample_lens().into_iter().max().unwrap_or(0);
    let mut step = read_column::<u64>(&c.step, path, "step")?;
    let mut policy_version = read_column::<u64>(&c.policy_version, path, "policy_version")?;
    let mut reward = read_column::<f32>(&c.reward, path, "reward")?;
    step.truncate(n);
    policy_version.truncate(n);
    reward.truncate(n);
    let datasets = list_datasets(&file, path)?;
    Ok(summarise(
        path,
        format_version,
        arbor_version,
        attributes,
        SampleColumns {
            step: &step,
            policy_version: &policy_version,
            reward: &reward,
            prompt_offsets: &po,
            response_offsets: &ro,
        },
        (rows - n) as u64,
        datasets,
    ))
}
