//! `INSERT … VALUES` statements of typed rows, through a serde serializer that turns a
//! row into SQL literals.

use clickhouse::Row;
use serde::Serialize;

/// `INSERT INTO table (columns) VALUES (…)` with the row's values as literals; the store
/// sends the same columns as RowBinary.
pub(super) fn insert<T: Row + Serialize>(table: &str, row: &T) -> String {
    let mut values = Literals(Vec::new());
    row.serialize(&mut values)
        .expect("row types serialize as structs of literals");
    format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        T::COLUMN_NAMES.join(", "),
        values.0.join(", ")
    )
}

/// A serde serializer that turns a struct into one SQL literal per field, escaped by the
/// `clickhouse` crate's own `bind`.
struct Literals(Vec<String>);

#[derive(Debug)]
struct LiteralError(String);

impl std::fmt::Display for LiteralError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LiteralError {}

impl serde::ser::Error for LiteralError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        LiteralError(msg.to_string())
    }
}

impl serde::ser::SerializeStruct for &mut Literals {
    type Ok = ();
    type Error = LiteralError;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _key: &'static str,
        value: &T,
    ) -> Result<(), LiteralError> {
        let literal = clickhouse::Client::default()
            .query("?")
            .bind(value)
            .sql_display()
            .to_string();
        self.0.push(literal);
        Ok(())
    }

    fn end(self) -> Result<(), LiteralError> {
        Ok(())
    }
}

macro_rules! unsupported {
    ($($method:ident($($arg:ty),*)),* $(,)?) => {
        $(
            fn $method(self $(, _: $arg)*) -> Result<(), LiteralError> {
                Err(LiteralError("only structs become literal lists".into()))
            }
        )*
    };
}

impl<'a> serde::Serializer for &'a mut Literals {
    type Ok = ();
    type Error = LiteralError;
    type SerializeSeq = serde::ser::Impossible<(), LiteralError>;
    type SerializeTuple = serde::ser::Impossible<(), LiteralError>;
    type SerializeTupleStruct = serde::ser::Impossible<(), LiteralError>;
    type SerializeTupleVariant = serde::ser::Impossible<(), LiteralError>;
    type SerializeMap = serde::ser::Impossible<(), LiteralError>;
    type SerializeStruct = &'a mut Literals;
    type SerializeStructVariant = serde::ser::Impossible<(), LiteralError>;

    unsupported! {
        serialize_bool(bool), serialize_i8(i8), serialize_i16(i16), serialize_i32(i32),
        serialize_i64(i64), serialize_u8(u8), serialize_u16(u16), serialize_u32(u32),
        serialize_u64(u64), serialize_f32(f32), serialize_f64(f64), serialize_char(char),
        serialize_str(&str), serialize_bytes(&[u8]), serialize_none(), serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }

    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, LiteralError> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, LiteralError> {
        Err(LiteralError("only structs become literal lists".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::MigrationRow;
    use crate::schema::table;

    #[test]
    fn inserts_list_columns_and_literals() {
        let sql = insert(
            table::SCHEMA_MIGRATIONS,
            &MigrationRow {
                version: 1,
                name: "it's".into(),
                applied_at: 5,
                collector: String::new(),
            },
        );
        assert_eq!(
            sql,
            r"INSERT INTO schema_migrations (version, name, applied_at, collector) VALUES (1, 'it\'s', 5, '')"
        );
    }
}
