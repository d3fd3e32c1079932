//! `BoundedVec<T, N>`: a vector whose decoder refuses more than `N` elements
//! before it allocates for them.

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::marker::PhantomData;

/// A vector holding at most `N` elements, on the wire and in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BoundedVec<T, const N: usize>(Vec<T>);

/// The caller tried to put more than the bound into a [`BoundedVec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("collection holds {len} elements, more than the bound of {bound}")]
pub struct BoundExceeded {
    pub len: usize,
    pub bound: usize,
}

impl<T, const N: usize> BoundedVec<T, N> {
    pub const BOUND: usize = N;

    pub fn new() -> Self {
        BoundedVec(Vec::new())
    }

    /// Takes the vector if it fits the bound.
    pub fn try_from_vec(items: Vec<T>) -> Result<Self, BoundExceeded> {
        if items.len() > N {
            return Err(BoundExceeded {
                len: items.len(),
                bound: N,
            });
        }
        Ok(BoundedVec(items))
    }

    /// Keeps the first `N` items of the iterator and ignores the rest.
    pub fn truncating(items: impl IntoIterator<Item = T>) -> Self {
        BoundedVec(items.into_iter().take(N).collect())
    }

    /// Appends unless full; returns false when the item was refused.
    pub fn push(&mut self, item: T) -> bool {
        if self.0.len() >= N {
            return false;
        }
        self.0.push(item);
        true
    }

    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<T> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<T, const N: usize> Default for BoundedVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> std::ops::Deref for BoundedVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a BoundedVec<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: Serialize, const N: usize> Serialize for BoundedVec<T, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BoundedVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedVisitor<T, N> {
            type Value = BoundedVec<T, N>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a sequence of at most {N} elements")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let announced = seq.size_hint().unwrap_or(0);
                if announced > N {
                    return Err(A::Error::invalid_length(announced, &self));
                }
                let mut items = Vec::with_capacity(announced);
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(A::Error::invalid_length(N + 1, &self));
                    }
                    items.push(item);
                }
                Ok(BoundedVec(items))
            }
        }

        deserializer.deserialize_seq(BoundedVisitor::<T, N>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_refuses_more_than_the_bound() {
        let four: Vec<u8> = vec![1, 2, 3, 4];
        let bytes = postcard::to_allocvec(&four).unwrap();
        assert!(postcard::from_bytes::<BoundedVec<u8, 3>>(&bytes).is_err());
        let ok: BoundedVec<u8, 4> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(ok.as_slice(), &[1, 2, 3, 4]);
    }

    #[test]
    fn huge_announced_length_does_not_allocate() {
        // varint length u32::MAX followed by nothing.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<BoundedVec<u64, 8>>(&bytes).is_err());
    }

    #[test]
    fn push_stops_at_the_bound() {
        let mut v = BoundedVec::<u8, 2>::new();
        assert!(v.push(1));
        assert!(v.push(2));
        assert!(!v.push(3));
        assert_eq!(v.len(), 2);
        assert!(BoundedVec::<u8, 2>::try_from_vec(vec![1, 2, 3]).is_err());
    }
}
