//! A canonical byte encoding of any `Serialize` value, for digests that two nodes compare.
//!
//! Why not JSON or TOML: their map order follows the map type (a `HashMap` iterates in a random
//! order per process) and, for `serde_json`, a crate feature anywhere in the build; float and
//! string formatting are output choices, not facts. Here the parsed structs are encoded exactly:
//!
//! - every value starts with a one-byte tag, and every variable-length value either carries its
//!   length or ends with a closing tag that no value starts with, so the encoding is prefix-free
//!   (two different values never encode to the same bytes, nor one to a prefix of another);
//! - integers are widened to 64 (or 128) bits, big-endian, so a field widened from `u32` to `u64`
//!   keeps its encoding; floats are their IEEE bits;
//! - struct fields are written with their names in declaration order (the order of the Rust type,
//!   never of the TOML text); map entries are sorted by their encoded key, whatever the map type.
//!
//! Output goes to a [`Sink`]: a digest context directly (nothing is buffered, which matters for
//! secrets), or a byte vector. The only buffers are those of map entries, which must be sorted
//! before they are written; they are zeroized when dropped, but a buffer that grew may have left
//! an older copy in freed memory, so values that hold secrets must not contain maps.

use serde::ser::{self, Serialize};
use std::fmt;
use zeroize::Zeroizing;

/// Where encoded bytes go.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for aws_lc_rs::digest::Context {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Zeroizing<Vec<u8>> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

mod tag {
    pub const FALSE: u8 = b'f';
    pub const TRUE: u8 = b't';
    pub const UNSIGNED: u8 = b'u';
    pub const SIGNED: u8 = b'i';
    pub const UNSIGNED_128: u8 = b'U';
    pub const SIGNED_128: u8 = b'I';
    pub const FLOAT: u8 = b'd';
    pub const CHAR: u8 = b'c';
    pub const STR: u8 = b's';
    pub const BYTES: u8 = b'y';
    pub const NONE: u8 = b'n';
    pub const SOME: u8 = b'o';
    pub const UNIT: u8 = b'z';
    pub const UNIT_VARIANT: u8 = b'v';
    pub const NEWTYPE_VARIANT: u8 = b'w';
    pub const TUPLE_VARIANT: u8 = b'T';
    pub const STRUCT_VARIANT: u8 = b'S';
    pub const SEQ: u8 = b'[';
    pub const SEQ_END: u8 = b']';
    pub const MAP: u8 = b'{';
    pub const MAP_END: u8 = b'}';
    pub const STRUCT: u8 = b'(';
    pub const STRUCT_END: u8 = b')';
    pub const ERROR: u8 = b'E';
}

/// A `Serialize` impl that refused (none of the config types do). Kept as a value, not a panic.
#[derive(Debug)]
pub(crate) struct CanonError(String);

impl fmt::Display for CanonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CanonError {}

impl ser::Error for CanonError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        CanonError(msg.to_string())
    }
}

/// Encodes `value` into `out`. If a `Serialize` impl fails, the error text is encoded in place of
/// the rest, tagged so it cannot be mistaken for a value: the result stays a deterministic
/// function of the input, so two nodes with the same configuration still agree.
pub(crate) fn encode<T: Serialize + ?Sized, S: Sink>(value: &T, out: &mut S) {
    if let Err(e) = value.serialize(Encoder { out: &mut *out }) {
        out.put(&[tag::ERROR]);
        put_str(out, &e.0);
    }
}

fn put_len<S: Sink>(out: &mut S, n: usize) {
    out.put(&(n as u64).to_be_bytes());
}

fn put_str<S: Sink>(out: &mut S, s: &str) {
    out.put(&[tag::STR]);
    put_len(out, s.len());
    out.put(s.as_bytes());
}

struct Encoder<'a, S: Sink> {
    out: &'a mut S,
}

impl<S: Sink> Encoder<'_, S> {
    fn unsigned(self, v: u64) -> Result<(), CanonError> {
        self.out.put(&[tag::UNSIGNED]);
        self.out.put(&v.to_be_bytes());
        Ok(())
    }

    fn signed(self, v: i64) -> Result<(), CanonError> {
        self.out.put(&[tag::SIGNED]);
        self.out.put(&v.to_be_bytes());
        Ok(())
    }
}

impl<'a, S: Sink> ser::Serializer for Encoder<'a, S> {
    type Ok = ();
    type Error = CanonError;
    type SerializeSeq = Seq<'a, S>;
    type SerializeTuple = Seq<'a, S>;
    type SerializeTupleStruct = Seq<'a, S>;
    type SerializeTupleVariant = Seq<'a, S>;
    type SerializeMap = Map<'a, S>;
    type SerializeStruct = Struct<'a, S>;
    type SerializeStructVariant = Struct<'a, S>;

    fn serialize_bool(self, v: bool) -> Result<(), CanonError> {
        self.out.put(&[if v { tag::TRUE } else { tag::FALSE }]);
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), CanonError> {
        self.signed(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), CanonError> {
        self.signed(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), CanonError> {
        self.signed(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), CanonError> {
        self.signed(v)
    }
    fn serialize_i128(self, v: i128) -> Result<(), CanonError> {
        self.out.put(&[tag::SIGNED_128]);
        self.out.put(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), CanonError> {
        self.unsigned(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), CanonError> {
        self.unsigned(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), CanonError> {
        self.unsigned(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), CanonError> {
        self.unsigned(v)
    }
    fn serialize_u128(self, v: u128) -> Result<(), CanonError> {
        self.out.put(&[tag::UNSIGNED_128]);
        self.out.put(&v.to_be_bytes());
        Ok(())
    }
    fn serialize_f32(self, v: f32) -> Result<(), CanonError> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<(), CanonError> {
        self.out.put(&[tag::FLOAT]);
        self.out.put(&v.to_bits().to_be_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), CanonError> {
        self.out.put(&[tag::CHAR]);
        self.out.put(&u32::from(v).to_be_bytes());
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), CanonError> {
        put_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), CanonError> {
        self.out.put(&[tag::BYTES]);
        put_len(self.out, v.len());
        self.out.put(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), CanonError> {
        self.out.put(&[tag::NONE]);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), CanonError> {
        self.out.put(&[tag::SOME]);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), CanonError> {
        self.out.put(&[tag::UNIT]);
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), CanonError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
    ) -> Result<(), CanonError> {
        self.out.put(&[tag::UNIT_VARIANT]);
        put_str(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.out.put(&[tag::NEWTYPE_VARIANT]);
        put_str(self.out, variant);
        value.serialize(self)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Seq<'a, S>, CanonError> {
        self.out.put(&[tag::SEQ]);
        Ok(Seq { out: self.out })
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq<'a, S>, CanonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Seq<'a, S>, CanonError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Seq<'a, S>, CanonError> {
        self.out.put(&[tag::TUPLE_VARIANT]);
        put_str(self.out, variant);
        self.out.put(&[tag::SEQ]);
        Ok(Seq { out: self.out })
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Map<'a, S>, CanonError> {
        Ok(Map { out: self.out, entries: Vec::new(), key: None })
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Struct<'a, S>, CanonError> {
        self.out.put(&[tag::STRUCT]);
        Ok(Struct { out: self.out })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _i: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Struct<'a, S>, CanonError> {
        self.out.put(&[tag::STRUCT_VARIANT]);
        put_str(self.out, variant);
        self.out.put(&[tag::STRUCT]);
        Ok(Struct { out: self.out })
    }
}

struct Seq<'a, S: Sink> {
    out: &'a mut S,
}

impl<S: Sink> Seq<'_, S> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        value.serialize(Encoder { out: &mut *self.out })
    }

    fn close(self) -> Result<(), CanonError> {
        self.out.put(&[tag::SEQ_END]);
        Ok(())
    }
}

impl<S: Sink> ser::SerializeSeq for Seq<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

impl<S: Sink> ser::SerializeTuple for Seq<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

impl<S: Sink> ser::SerializeTupleStruct for Seq<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

impl<S: Sink> ser::SerializeTupleVariant for Seq<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        self.element(value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

/// One map entry: its key and its value, each encoded on its own.
type Entry = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// Entries are encoded on their own, then sorted by key bytes and written at `end`.
struct Map<'a, S: Sink> {
    out: &'a mut S,
    entries: Vec<Entry>,
    key: Option<Zeroizing<Vec<u8>>>,
}

fn encode_alone<T: Serialize + ?Sized>(value: &T) -> Result<Zeroizing<Vec<u8>>, CanonError> {
    let mut buf = Zeroizing::new(Vec::new());
    value.serialize(Encoder { out: &mut buf })?;
    Ok(buf)
}

impl<S: Sink> ser::SerializeMap for Map<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), CanonError> {
        self.key = Some(encode_alone(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), CanonError> {
        let key = self.key.take().ok_or_else(|| CanonError("map value without a key".into()))?;
        self.entries.push((key, encode_alone(value)?));
        Ok(())
    }
    fn end(mut self) -> Result<(), CanonError> {
        if self.key.is_some() {
            return Err(CanonError("map key without a value".into()));
        }
        self.entries.sort_by(|a, b| (&a.0[..], &a.1[..]).cmp(&(&b.0[..], &b.1[..])));
        self.out.put(&[tag::MAP]);
        for (k, v) in &self.entries {
            self.out.put(k);
            self.out.put(v);
        }
        self.out.put(&[tag::MAP_END]);
        Ok(())
    }
}

struct Struct<'a, S: Sink> {
    out: &'a mut S,
}

impl<S: Sink> Struct<'_, S> {
    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), CanonError> {
        put_str(self.out, key);
        value.serialize(Encoder { out: &mut *self.out })
    }

    fn close(self) -> Result<(), CanonError> {
        self.out.put(&[tag::STRUCT_END]);
        Ok(())
    }
}

impl<S: Sink> ser::SerializeStruct for Struct<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

impl<S: Sink> ser::SerializeStructVariant for Struct<'_, S> {
    type Ok = ();
    type Error = CanonError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), CanonError> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), CanonError> {
        self.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn bytes<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
        let mut out = Zeroizing::new(Vec::new());
        encode(v, &mut out);
        out.to_vec()
    }

    #[test]
    fn maps_encode_the_same_whatever_their_order() {
        let h: HashMap<String, u32> = (0..50).map(|i| (format!("k{i}"), i)).collect();
        let b: BTreeMap<String, u32> = h.clone().into_iter().collect();
        assert_eq!(bytes(&h), bytes(&b));
    }

    #[test]
    fn integer_width_does_not_matter_but_sign_and_kind_do() {
        assert_eq!(bytes(&7u8), bytes(&7u64));
        assert_ne!(bytes(&7u64), bytes(&7i64));
        assert_ne!(bytes(&Some(7u8)), bytes(&7u8));
        assert_ne!(bytes("7"), bytes(&7u8));
    }

    #[test]
    fn sequences_are_delimited() {
        // ["ab"], ["a","b"] and ["a"],["b"] must all differ.
        let one = bytes(&vec!["ab"]);
        let two = bytes(&vec!["a", "b"]);
        let nested = bytes(&(vec!["a"], vec!["b"]));
        assert_ne!(one, two);
        assert_ne!(two, nested);
    }
}
