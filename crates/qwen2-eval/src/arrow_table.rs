//! Columns of a Hugging Face `datasets` Arrow file (an Arrow IPC stream), read with the
//! `arrow-ipc` crate into plain Rust vectors by column name.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, Int8Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_schema::DataType;

use crate::error::{io, Error, Result};

pub struct Table {
    path: PathBuf,
    batches: Vec<RecordBatch>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Table> {
        let f = File::open(path).map_err(io(path))?;
        let fmt = |e: arrow_schema::ArrowError| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a readable Arrow IPC stream: {e}"),
        };
        let reader = StreamReader::try_new(BufReader::new(f), None).map_err(fmt)?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(fmt)?;
        Ok(Table {
            path: path.to_path_buf(),
            batches,
        })
    }

    pub fn len(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    fn err(&self, msg: String) -> Error {
        Error::Format {
            path: self.path.clone(),
            msg,
        }
    }

    fn columns(&self, name: &str) -> Result<Vec<ArrayRef>> {
        self.batches
            .iter()
            .map(|b| {
                b.column_by_name(name).cloned().ok_or_else(|| {
                    let have: Vec<String> = b
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect();
                    self.err(format!("no column `{name}` (columns: {})", have.join(", ")))
                })
            })
            .collect()
    }

    pub fn strings(&self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.len());
        for col in self.columns(name)? {
            out.extend(self.string_values(name, &col)?);
        }
        Ok(out)
    }

    pub fn ints(&self, name: &str) -> Result<Vec<i64>> {
        let mut out = Vec::with_capacity(self.len());
        for col in self.columns(name)? {
            let vals: Vec<Option<i64>> = match col.data_type() {
                DataType::Int8 => col
                    .as_primitive::<Int8Type>()
                    .iter()
                    .map(|v| v.map(i64::from))
                    .collect(),
                DataType::Int16 => col
                    .as_primitive::<Int16Type>()
                    .iter()
                    .map(|v| v.map(i64::from))
                    .collect(),
                DataType::Int32 => col
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map(i64::from))
                    .collect(),
                DataType::Int64 => col.as_primitive::<Int64Type>().iter().collect(),
                t => return Err(self.err(format!("column `{name}` is {t}, expected an integer"))),
            };
            for v in vals {
                out.push(v.ok_or_else(|| self.err(format!("column `{name}` has a null")))?);
            }
        }
        Ok(out)
    }

    pub fn string_lists(&self, name: &str) -> Result<Vec<Vec<String>>> {
        let mut out = Vec::with_capacity(self.len());
        for col in self.columns(name)? {
            match col.data_type() {
                DataType::List(_) => {
                    for v in col.as_list::<i32>().iter() {
                        let v = v.ok_or_else(|| self.err(format!("column `{name}` has a null")))?;
                        out.push(self.string_values(name, &v)?);
                    }
                }
                DataType::LargeList(_) => {
                    for v in col.as_list::<i64>().iter() {
                        let v = v.ok_or_else(|| self.err(format!("column `{name}` has a null")))?;
                        out.push(self.string_values(name, &v)?);
                    }
                }
                t => {
                    return Err(self.err(format!(
                        "column `{name}` is {t}, expected a list of strings"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn string_values(&self, name: &str, col: &ArrayRef) -> Result<Vec<String>> {
        let null = || self.err(format!("column `{name}` has a null"));
        match col.data_type() {
            DataType::Utf8 => col
                .as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_owned).ok_or_else(null))
                .collect(),
            DataType::LargeUtf8 => col
                .as_string::<i64>()
                .iter()
                .map(|v| v.map(str::to_owned).ok_or_else(null))
                .collect(),
            t => Err(self.err(format!("column `{name}` is {t}, expected strings"))),
        }
    }
}
