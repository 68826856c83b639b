//! A message's envelope recipients, packed: one string holding every address and the offset
//! where each ends. A delivery pass keeps them for the whole pass, and an exploded campaign
//! has 100,000 of them: as `Vec<String>` that is 24 bytes of `String` plus an allocation
//! (about 32 bytes more) per address; packed it is 4 bytes plus the text. In the spool they
//! are an ordinary JSON list of strings, read straight into the packed form.

use std::fmt;
use std::ops::Index;

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Envelope addresses, indexed from 0 as plan transactions refer to them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    text: String,
    ends: Vec<u32>,
}

impl Addresses {
    /// No address.
    pub fn new() -> Addresses {
        Addresses::default()
    }

    /// How many addresses.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Address `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.text[start..end])
    }

    /// Every address, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| &self[i])
    }

    /// Add one address at the end.
    ///
    /// # Panics
    /// When all the addresses together pass 4 GiB (a message has at most
    /// `server.max_recipients` of at most 256 octets each).
    pub fn push(&mut self, address: &str) {
        self.text.push_str(address);
        self.ends.push(u32::try_from(self.text.len()).expect("envelope addresses below 4 GiB"));
    }

    /// Give back the room left over from growing.
    pub fn shrink_to_fit(&mut self) {
        self.text.shrink_to_fit();
        self.ends.shrink_to_fit();
    }
}

impl Index<usize> for Addresses {
    type Output = str;

    fn index(&self, i: usize) -> &str {
        self.get(i).unwrap_or_else(|| panic!("address {i} of {}", self.len()))
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a str;
    type IntoIter = Box<dyn ExactSizeIterator<Item = &'a str> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl<S: AsRef<str>> FromIterator<S> for Addresses {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Addresses {
        let mut addresses = Addresses::new();
        for a in iter {
            addresses.push(a.as_ref());
        }
        addresses
    }
}

impl From<Vec<String>> for Addresses {
    fn from(v: Vec<String>) -> Addresses {
        v.iter().collect()
    }
}

impl<S: AsRef<str>> PartialEq<[S]> for Addresses {
    fn eq(&self, other: &[S]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == b.as_ref())
    }
}

impl<S: AsRef<str>, const N: usize> PartialEq<[S; N]> for Addresses {
    fn eq(&self, other: &[S; N]) -> bool {
        *self == other[..]
    }
}

impl<S: AsRef<str>> PartialEq<Vec<S>> for Addresses {
    fn eq(&self, other: &Vec<S>) -> bool {
        *self == other[..]
    }
}

impl fmt::Debug for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Addresses {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Addresses, D::Error> {
        deserializer.deserialize_seq(ListVisitor)
    }
}

struct ListVisitor;

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Addresses;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of addresses")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Addresses, A::Error> {
        let mut addresses = Addresses::new();
        while seq.next_element_seed(Append(&mut addresses))?.is_some() {}
        Ok(addresses)
    }
}

/// Reads one address straight onto the end of the packed text (no `String` of its own).
struct Append<'a>(&'a mut Addresses);

impl<'de> DeserializeSeed<'de> for Append<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Append<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an address")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<(), E> {
        if self.0.text.len() + s.len() > u32::MAX as usize {
            return Err(E::custom("envelope addresses above 4 GiB"));
        }
        self.0.push(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn they_read_and_write_as_a_json_list() {
        let a: Addresses = ["a@x.test", "", "b\u{e9}@y.test"].iter().collect();
        assert_eq!(a.len(), 3);
        assert_eq!((&a[0], &a[1], &a[2]), ("a@x.test", "", "b\u{e9}@y.test"));
        assert_eq!(a.get(3), None);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"["a@x.test","","bé@y.test"]"#);
        let back: Addresses = serde_json::from_reader(json.as_bytes()).unwrap();
        assert_eq!(back, a);
        assert_eq!(back, ["a@x.test", "", "b\u{e9}@y.test"]);
        let escaped: Addresses = serde_json::from_str(r#"["q\"x\"@x.test"]"#).unwrap();
        assert_eq!(&escaped[0], "q\"x\"@x.test");
        assert!(serde_json::from_str::<Addresses>(r#"["a", 1]"#).is_err());
        assert_eq!(format!("{:?}", a), r#"["a@x.test", "", "bé@y.test"]"#);
    }
}
