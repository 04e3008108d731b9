//! The AnnData-on-Zarr-v3 layout of one plate group, as `anndata.read_zarr`
//! (and so scanpy) loads it, with `dimension_names` so xarray opens the
//! arrays too:
//!
//! ```text
//! <plate>/zarr.json        group, encoding anndata 0.1.0, consolidated metadata
//!   X                      float32 [sites, D]
//!   obs/_index             string: site key plate/well/site[/t<t>][/z<z>]
//!   obs/<column>           string or int32 columns, see [`OBS_COLUMNS`]
//!   var/_index             string [D]: emb_0 .. emb_{D-1}
//!   uns/<key>              0-d strings: plate, bundle, method, status, ...
//! ```
//!
//! Any other child of the group would break `read_zarr`, so the daemon
//! keeps no bookkeeping of its own inside it.

use serde_json::{Map, Value, json};
use zarrs::array::{ArrayBuilder, ArrayMetadataV3, ArraySubset, data_type};

use super::StoreError;

/// One column of `obs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Variable-length UTF-8.
    Text,
    /// 32-bit integers (-1 where not applicable).
    Int,
}

/// The `obs` columns after `_index`, in order.
pub const OBS_COLUMNS: [(&str, ColumnKind); 10] = [
    ("well", ColumnKind::Text),
    ("row", ColumnKind::Text),
    ("column", ColumnKind::Int),
    ("site", ColumnKind::Int),
    ("timepoint", ColumnKind::Int),
    ("z", ColumnKind::Int),
    ("paths", ColumnKind::Text),
    ("acquired", ColumnKind::Text),
    ("correction", ColumnKind::Text),
    // Written last in a commit: a row reads `final` only once its
    // embedding in X is final.
    ("status", ColumnKind::Text),
];

/// Every `obs` array in writing order: the index, then [`OBS_COLUMNS`].
pub fn obs_arrays() -> impl Iterator<Item = (&'static str, ColumnKind)> {
    std::iter::once(("_index", ColumnKind::Text)).chain(OBS_COLUMNS)
}

/// Rows `range` of a one-dimensional array.
pub fn rows(range: std::ops::Range<u64>) -> ArraySubset {
    ArraySubset::new_with_ranges(std::slice::from_ref(&range))
}

fn encoding(kind: &str, version: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("encoding-type".into(), json!(kind));
    m.insert("encoding-version".into(), json!(version));
    m
}

/// The JSON metadata an array builder describes.
pub fn metadata(builder: &ArrayBuilder) -> Result<Value, StoreError> {
    let meta: ArrayMetadataV3 = builder
        .build_metadata()
        .map_err(|e| StoreError::Layout(e.to_string()))?;
    serde_json::to_value(meta).map_err(|e| StoreError::Layout(e.to_string()))
}

/// `X` with `rows` rows of `dim` floats, chunked by `chunk_rows`.
pub fn x_array(rows: u64, dim: u64, chunk_rows: u64) -> ArrayBuilder {
    let mut b = ArrayBuilder::new(
        vec![rows, dim],
        vec![chunk_rows, dim.max(1)],
        data_type::float32(),
        0.0f32,
    );
    b.dimension_names(Some(["obs", "var"]))
        .attributes(encoding("array", "0.2.0"));
    b
}

/// A one-dimensional column of `rows` along dimension `dim`.
pub fn column_array(kind: ColumnKind, rows: u64, chunk_rows: u64, dim: &str) -> ArrayBuilder {
    let (mut b, attrs) = match kind {
        ColumnKind::Text => (
            ArrayBuilder::new(vec![rows], vec![chunk_rows], data_type::string(), ""),
            encoding("string-array", "0.2.0"),
        ),
        ColumnKind::Int => (
            ArrayBuilder::new(vec![rows], vec![chunk_rows], data_type::int32(), -1i32),
            encoding("array", "0.2.0"),
        ),
    };
    b.dimension_names(Some([dim])).attributes(attrs);
    b
}

/// A 0-d string in `uns`.
pub fn scalar_array() -> ArrayBuilder {
    let mut b = ArrayBuilder::new(
        Vec::<u64>::new(),
        Vec::<u64>::new(),
        data_type::string(),
        "",
    );
    b.attributes(encoding("string", "0.2.0"));
    b
}

/// A group's metadata; `consolidated` holds its descendants' metadata by
/// relative path (nested groups carry an empty inline entry, which
/// zarr-python requires).
pub fn group_metadata(
    attrs: Map<String, Value>,
    consolidated: Option<Map<String, Value>>,
) -> Value {
    let mut g = json!({"zarr_format": 3, "node_type": "group", "attributes": attrs});
    if let Some(children) = consolidated {
        g["consolidated_metadata"] =
            json!({"kind": "inline", "must_understand": false, "metadata": children});
    }
    g
}

/// Attributes of the plate's AnnData group.
pub fn anndata_attrs() -> Map<String, Value> {
    encoding("anndata", "0.1.0")
}

/// Attributes of the `obs` (or `var`) dataframe with `columns` in order.
pub fn dataframe_attrs(columns: &[&str]) -> Map<String, Value> {
    let mut m = encoding("dataframe", "0.2.0");
    m.insert("_index".into(), json!("_index"));
    m.insert("column-order".into(), json!(columns));
    m
}

/// Attributes of `uns`.
pub fn dict_attrs() -> Map<String, Value> {
    encoding("dict", "0.1.0")
}

/// The consolidated metadata of a plate group: every array and subgroup
/// by relative path. serde_json's map is ordered by key, so the output is
/// sorted (zarr-python misreads unsorted entries).
pub fn consolidated(
    rows: u64,
    dim: u64,
    chunk_rows: u64,
    uns_keys: &[&str],
) -> Result<Map<String, Value>, StoreError> {
    let mut m = Map::new();
    let empty_group = |attrs| group_metadata(attrs, Some(Map::new()));
    m.insert("X".into(), metadata(&x_array(rows, dim, chunk_rows))?);
    let obs_columns: Vec<&str> = OBS_COLUMNS.iter().map(|c| c.0).collect();
    m.insert("obs".into(), empty_group(dataframe_attrs(&obs_columns)));
    m.insert(
        "obs/_index".into(),
        metadata(&column_array(ColumnKind::Text, rows, chunk_rows, "obs"))?,
    );
    for (name, kind) in OBS_COLUMNS {
        m.insert(
            format!("obs/{name}"),
            metadata(&column_array(kind, rows, chunk_rows, "obs"))?,
        );
    }
    m.insert("var".into(), empty_group(dataframe_attrs(&[])));
    m.insert(
        "var/_index".into(),
        metadata(&column_array(ColumnKind::Text, dim, dim.max(1), "var"))?,
    );
    m.insert("uns".into(), empty_group(dict_attrs()));
    for key in uns_keys {
        m.insert(format!("uns/{key}"), metadata(&scalar_array())?);
    }
    Ok(m)
}
