//! The layout kvd 0.1 wrote everything in (data dir format 1, snapshot
//! files `KVSNAP01`, peer format 1): bincode 1's default layout, read and
//! written here by a small serde Deserializer and Serializer of our own, so
//! that no bincode crate is needed.
//!
//! The layout, for a value of a serde data model type:
//!
//! ```text
//! bool                 u8: 0 or 1
//! integers, floats     fixed width, little-endian (u8 .. u128, f32, f64)
//! char                 its UTF-8 bytes
//! str, bytes           u64 length | the bytes
//! Option               u8 0 (None) | u8 1, then the value
//! unit, unit struct    nothing
//! newtype struct       the inner value
//! seq, map             u64 count | the elements (a map's key, value, ...)
//! tuple, struct        the fields in order, nothing around them
//! enum                 u32 variant index | the variant's content as above
//! ```
//!
//! Like bincode 1's `deserialize`, decoding leaves trailing bytes unread.
//! The reader serves the upgrade of older data dirs and snapshot files and
//! peers of the older kvd; the writer only the latter (crate::format).

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};

/// Why a value does not decode or encode in this layout.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(String);

impl de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Error {
        Error(msg.to_string())
    }
}

impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Error {
        Error(msg.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// Decodes a `T` from the front of `b` (trailing bytes are left unread).
pub fn from_slice<'de, T: serde::Deserialize<'de>>(b: &'de [u8]) -> Result<T> {
    T::deserialize(&mut Deserializer { input: b })
}

/// Encodes `v`.
pub fn to_vec<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    let mut s = Serializer { out: Vec::with_capacity(64) };
    v.serialize(&mut s)?;
    Ok(s.out)
}

/// Reads the bincode 1 layout from a byte slice.
struct Deserializer<'de> {
    input: &'de [u8],
}

impl<'de> Deserializer<'de> {
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(Error(format!("unexpected end: {n} bytes wanted, {} left", self.input.len())));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A u64 length or count, as a usize.
    fn len(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| Error(format!("length {n} too large")))
    }

    /// A length-prefixed run of bytes, never longer than what is left.
    fn bytes(&mut self) -> Result<&'de [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'de str> {
        std::str::from_utf8(self.bytes()?).map_err(|e| Error(format!("string is not UTF-8: {e}")))
    }
}

macro_rules! fixed {
    ($($method:ident => $visit:ident($t:ty),)*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
            v.$visit(<$t>::from_le_bytes(self.array()?))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fixed! {
        deserialize_u8 => visit_u8(u8),
        deserialize_u16 => visit_u16(u16),
        deserialize_u32 => visit_u32(u32),
        deserialize_u64 => visit_u64(u64),
        deserialize_u128 => visit_u128(u128),
        deserialize_i8 => visit_i8(i8),
        deserialize_i16 => visit_i16(i16),
        deserialize_i32 => visit_i32(i32),
        deserialize_i64 => visit_i64(i64),
        deserialize_i128 => visit_i128(i128),
        deserialize_f32 => visit_f32(f32),
        deserialize_f64 => visit_f64(f64),
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error("the bincode 1 layout does not describe itself".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error("the bincode 1 layout does not describe itself".into()))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(Error("the bincode 1 layout has no identifiers".into()))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        match self.array::<1>()?[0] {
            0 => v.visit_bool(false),
            1 => v.visit_bool(true),
            b => Err(Error(format!("invalid bool {b}"))),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let first = *self.input.first().ok_or_else(|| Error("unexpected end: a char wanted".into()))?;
        let width = match first {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return Err(Error("invalid char".into())),
        };
        let s = std::str::from_utf8(self.take(width)?).map_err(|_| Error("invalid char".into()))?;
        v.visit_char(s.chars().next().ok_or_else(|| Error("invalid char".into()))?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_str(self.str()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_str(self.str()?)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_borrowed_bytes(self.bytes()?)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        match self.array::<1>()?[0] {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            t => Err(Error(format!("invalid Option tag {t}"))),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let left = self.len()?;
        v.visit_seq(Counted { de: self, left })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value> {
        v.visit_seq(Counted { de: self, left: len })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, len: usize, v: V) -> Result<V::Value> {
        v.visit_seq(Counted { de: self, left: len })
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value> {
        let left = self.len()?;
        v.visit_map(Counted { de: self, left })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value> {
        v.visit_seq(Counted { de: self, left: fields.len() })
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, _: &'static [&'static str], v: V) -> Result<V::Value> {
        v.visit_enum(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence, map, tuple or struct of a known number of elements.
struct Counted<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        // NOTE: serde caps what it preallocates from a hint; a damaged
        // count fails at the end of the input instead.
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = u32::from_le_bytes(self.array()?);
        let v = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(index))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value> {
        v.visit_seq(Counted { de: self, left: len })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value> {
        v.visit_seq(Counted { de: self, left: fields.len() })
    }
}

/// Writes the bincode 1 layout.
struct Serializer {
    out: Vec<u8>,
}

impl Serializer {
    fn len(&mut self, n: usize) {
        self.out.extend_from_slice(&(n as u64).to_le_bytes());
    }

    fn variant(&mut self, index: u32) {
        self.out.extend_from_slice(&index.to_le_bytes());
    }
}

macro_rules! put_fixed {
    ($($method:ident($t:ty),)*) => {$(
        fn $method(self, v: $t) -> Result<()> {
            self.out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl ser::Serializer for &mut Serializer {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    put_fixed! {
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_f32(f32),
        serialize_f64(f64),
    }

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.push(u8::from(v));
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<()> {
        self.out.extend_from_slice(v.encode_utf8(&mut [0u8; 4]).as_bytes());
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        self.serialize_bytes(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.len(v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }

    fn serialize_none(self) -> Result<()> {
        self.out.push(0);
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<()> {
        self.out.push(1);
        v.serialize(self)
    }

    fn serialize_unit(self) -> Result<()> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<()> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Result<()> {
        self.variant(index);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<()> {
        v.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Result<()> {
        self.variant(index);
        v.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or_else(|| Error("a sequence of unknown length".into()))?);
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_tuple_variant(self, _: &'static str, index: u32, _: &'static str, _: usize) -> Result<Self> {
        self.variant(index);
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self> {
        self.len(len.ok_or_else(|| Error("a map of unknown length".into()))?);
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self> {
        Ok(self)
    }

    fn serialize_struct_variant(self, _: &'static str, index: u32, _: &'static str, _: usize) -> Result<Self> {
        self.variant(index);
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

macro_rules! compound {
    ($($trait:ident :: $method:ident $(($key:ident))?,)*) => {$(
        impl ser::$trait for &mut Serializer {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(&mut self, $($key: &'static str,)? v: &T) -> Result<()> {
                $(let _ = $key;)?
                v.serialize(&mut **self)
            }

            fn end(self) -> Result<()> {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
    SerializeStruct::serialize_field(key),
    SerializeStructVariant::serialize_field(key),
}

impl ser::SerializeMap for &mut Serializer {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<()> {
        k.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<()> {
        v.serialize(&mut **self)
    }

    fn end(self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Unit,
        New(u16),
        Tuple(u8, bool),
        Struct { a: i32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        s: String,
        #[serde(with = "serde_bytes")]
        b: Vec<u8>,
        o: Option<u64>,
        n: Option<i8>,
        e: Vec<E>,
        m: BTreeMap<u32, char>,
        t: (u8, f64),
        u: (),
    }

    /// The bytes bincode 1.3's `serialize` gave for `sample()`, written out
    /// by hand from its layout.
    fn sample_bytes() -> Vec<u8> {
        let mut b = vec![];
        b.extend([2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']); // s: u64 length, bytes
        b.extend([3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3]); // b
        b.extend([1, 7, 0, 0, 0, 0, 0, 0, 0]); // o: Some, u64
        b.extend([0]); // n: None
        b.extend([4, 0, 0, 0, 0, 0, 0, 0]); // e: 4 elements
        b.extend([0, 0, 0, 0]); // E::Unit: u32 index
        b.extend([1, 0, 0, 0, 0x34, 0x12]); // E::New(0x1234)
        b.extend([2, 0, 0, 0, 9, 1]); // E::Tuple(9, true)
        b.extend([3, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF]); // E::Struct { a: -2 }
        b.extend([1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0xC3, 0xA9]); // m: {5: 'é'}
        b.extend([0xFF]); // t.0
        b.extend(1.5f64.to_le_bytes()); // t.1
        b
    }

    fn sample() -> S {
        S {
            s: "hi".into(),
            b: vec![1, 2, 3],
            o: Some(7),
            n: None,
            e: vec![E::Unit, E::New(0x1234), E::Tuple(9, true), E::Struct { a: -2 }],
            m: [(5, 'é')].into(),
            t: (255, 1.5),
            u: (),
        }
    }

    #[test]
    fn reads_and_writes_the_bincode_1_layout() {
        assert_eq!(from_slice::<S>(&sample_bytes()).expect("decode"), sample());
        assert_eq!(to_vec(&sample()).expect("encode"), sample_bytes());
    }

    #[test]
    fn leaves_trailing_bytes_and_refuses_short_or_bad_input() {
        assert_eq!(from_slice::<u32>(&[1, 0, 0, 0, 9]).expect("decode"), 1);
        let b = sample_bytes();
        for cut in [0, 1, 9, 20, b.len() - 1] {
            assert!(from_slice::<S>(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
        assert!(from_slice::<bool>(&[2]).is_err());
        assert!(from_slice::<Option<u8>>(&[2, 0]).is_err());
        assert!(from_slice::<E>(&[4, 0, 0, 0]).is_err(), "variant index past the last");
        assert!(from_slice::<String>(&[1, 0, 0, 0, 0, 0, 0, 0, 0xFF]).is_err(), "not UTF-8");
        // A length far past the input fails without allocating it.
        assert!(from_slice::<Vec<u8>>(&[0xFF; 8]).is_err());
        assert!(from_slice::<String>(&[0xFF; 16]).is_err());
    }
}
