//! The borrowed field value that filters, sorts and indexes read, and its owned twin.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use super::fields::{FieldList, Fields};

/// A field of a record, borrowed: what filters, sorts and indexes see.
///
/// Reading a field never allocates: strings and lists are borrowed from the record.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// An explicit null (`None` in Rust, `null` in JSON).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(&'a str),
    /// A list; predicates on a list field hold when any element satisfies them.
    List(&'a dyn FieldList),
    /// A nested object, reached by dotted paths such as `"stats.hp"`.
    Object(&'a dyn Fields),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("Null"),
            Value::Bool(b) => write!(f, "Bool({b})"),
            Value::Int(i) => write!(f, "Int({i})"),
            Value::Float(x) => write!(f, "Float({x})"),
            Value::Str(s) => write!(f, "Str({s:?})"),
            Value::List(l) => f.debug_list().entries((0..l.len()).map(|i| l.at(i))).finish(),
            Value::Object(_) => f.write_str("Object(..)"),
        }
    }
}

impl<'a> Value<'a> {
    /// The rank of the value's type in the total order used for sorting:
    /// null < bool < number < string < list < object.
    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
            Value::List(_) => 4,
            Value::Object(_) => 5,
        }
    }

    /// The number this value holds, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(x) => Some(x),
            _ => None,
        }
    }

    /// The string this value holds, if it is one.
    pub fn as_str(&self) -> Option<&'a str> {
        match *self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Total order over values (numbers compare numerically across int and float;
    /// NaN sorts after every other number).
    pub fn total_cmp(&self, other: &Value<'_>) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Int(a), Value::Float(b)) => cmp_int_float(*a, *b),
            (Value::Float(a), Value::Int(b)) => cmp_int_float(*b, *a).reverse(),
            // -0.0 and 0.0 are one number (index keys normalise both to 0).
            (Value::Float(a), Value::Float(b)) if a == b => Ordering::Equal,
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::List(a), Value::List(b)) => {
                for i in 0..a.len().min(b.len()) {
                    let o = a.at(i).total_cmp(&b.at(i));
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                a.len().cmp(&b.len())
            }
            (Value::Object(_), Value::Object(_)) => Ordering::Equal,
            _ => self.rank().cmp(&other.rank()),
        }
    }

    /// Equality as filters see it: numbers compare numerically, lists element-wise.
    pub fn loose_eq(&self, other: &Value<'_>) -> bool {
        match (self, other) {
            (Value::Object(_), _) | (_, Value::Object(_)) => false,
            _ => self.total_cmp(other) == Ordering::Equal,
        }
    }

    /// An owned copy of this value (objects become [`Key::Null`]; they are never index keys).
    pub fn to_key(&self) -> Key {
        match *self {
            Value::Null | Value::Object(_) => Key::Null,
            Value::Bool(b) => Key::Bool(b),
            Value::Int(i) => Key::Int(i),
            Value::Float(x) => Key::from_f64(x),
            Value::Str(s) => Key::Str(s.into()),
            Value::List(l) => Key::List((0..l.len()).map(|i| l.at(i).to_key()).collect()),
        }
    }

    /// Converts to JSON (used when a value must cross the wire, e.g. in cursor tokens).
    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Value::Null | Value::Object(_) => serde_json::Value::Null,
            Value::Bool(b) => b.into(),
            Value::Int(i) => i.into(),
            Value::Float(x) => {
                serde_json::Number::from_f64(x).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::Str(s) => s.into(),
            Value::List(l) => (0..l.len()).map(|i| l.at(i).to_json()).collect(),
        }
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Less;
    }
    // Compare exactly: within ±2^53 the conversion is lossless.
    const EXACT: i64 = 1 << 53;
    if (-EXACT..=EXACT).contains(&i) {
        // `partial_cmp`: 0 equals -0.0 (NaN was handled above).
        (i as f64).partial_cmp(&f).unwrap_or(Ordering::Less)
    } else if f >= 9.3e18 {
        Ordering::Less
    } else if f <= -9.3e18 {
        Ordering::Greater
    } else {
        i.cmp(&(f.trunc() as i64)).then_with(|| {
            if f.fract() > 0.0 {
                Ordering::Less
            } else if f.fract() < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        })
    }
}

/// An owned, hashable, totally ordered value: a key of an index, a constant in a query,
/// a position in a cursor token.
///
/// Integral floats are normalised to [`Key::Int`] so that `3` and `3.0` are the same key.
#[derive(Clone, Debug)]
pub enum Key {
    /// Null or missing.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer (or an integral float).
    Int(i64),
    /// A non-integral float.
    Float(f64),
    /// A string.
    Str(Box<str>),
    /// A list.
    List(Box<[Key]>),
}

impl Key {
    /// Makes a key of a float, normalising integral values to [`Key::Int`].
    pub fn from_f64(x: f64) -> Key {
        if x.is_nan() {
            return Key::Float(f64::NAN);
        }
        if x.fract() == 0.0 && (-9.2e18..=9.2e18).contains(&x) { Key::Int(x as i64) } else { Key::Float(x) }
    }

    /// Borrows this key as a [`Value`].
    pub fn as_value(&self) -> Value<'_> {
        match self {
            Key::Null => Value::Null,
            Key::Bool(b) => Value::Bool(*b),
            Key::Int(i) => Value::Int(*i),
            Key::Float(x) => Value::Float(*x),
            Key::Str(s) => Value::Str(s),
            Key::List(l) => Value::List(l),
        }
    }

    /// Reads a key from a JSON scalar or array; objects are not keys.
    pub fn from_json(v: &serde_json::Value) -> Option<Key> {
        Some(match v {
            serde_json::Value::Null => Key::Null,
            serde_json::Value::Bool(b) => Key::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Key::Int(i),
                None => Key::from_f64(n.as_f64()?),
            },
            serde_json::Value::String(s) => Key::Str(s.as_str().into()),
            serde_json::Value::Array(a) => Key::List(a.iter().map(Key::from_json).collect::<Option<_>>()?),
            serde_json::Value::Object(_) => return None,
        })
    }

    /// The key as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        self.as_value().to_json()
    }

    /// Bytes this key holds on the heap (for index memory reports).
    pub fn heap_size(&self) -> usize {
        match self {
            Key::Str(s) => s.len(),
            Key::List(l) => l.len() * size_of::<Key>() + l.iter().map(Key::heap_size).sum::<usize>(),
            _ => 0,
        }
    }
}

impl PartialEq for Key {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    #[inline(always)]
    fn cmp(&self, other: &Self) -> Ordering {
        // Keys of one index are nearly always of one kind: compare those directly, inlined
        // (an ordered index's large commit sorts and merges hundreds of thousands of them).
        match (self, other) {
            (Key::Int(a), Key::Int(b)) => a.cmp(b),
            (Key::Str(a), Key::Str(b)) => a.cmp(b),
            _ => mixed_cmp(self, other),
        }
    }
}

/// [`Key::cmp`] of keys of different kinds (or of floats, bools, lists): out of line.
#[inline(never)]
#[cold]
fn mixed_cmp(a: &Key, b: &Key) -> Ordering {
    a.as_value().total_cmp(&b.as_value())
}
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Null => 0u8.hash(state),
            Key::Bool(b) => (1u8, b).hash(state),
            Key::Int(i) => (2u8, i).hash(state),
            Key::Float(x) => (3u8, x.to_bits()).hash(state),
            Key::Str(s) => (4u8, s).hash(state),
            Key::List(l) => (5u8, l).hash(state),
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key::Str(s.into())
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        Key::Str(s.into())
    }
}
impl From<i64> for Key {
    fn from(i: i64) -> Self {
        Key::Int(i)
    }
}
impl From<f64> for Key {
    fn from(x: f64) -> Self {
        Key::from_f64(x)
    }
}
impl From<bool> for Key {
    fn from(b: bool) -> Self {
        Key::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_across_int_and_float() {
        assert_eq!(Value::Int(3).total_cmp(&Value::Float(3.0)), Ordering::Equal);
        assert_eq!(Value::Int(3).total_cmp(&Value::Float(3.5)), Ordering::Less);
        assert_eq!(Value::Float(-0.5).total_cmp(&Value::Int(0)), Ordering::Less);
        assert_eq!(Value::Int(i64::MAX).total_cmp(&Value::Float(1e19)), Ordering::Less);
        assert_eq!(Key::from_f64(4.0), Key::Int(4));
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(Value::Float(-0.0).total_cmp(&Value::Int(0)), Ordering::Equal);
        assert_eq!(Value::Float(-0.0).total_cmp(&Value::Float(0.0)), Ordering::Equal);
        assert_eq!(Key::from_f64(-0.0), Key::Int(0));
        assert!(Value::Float(-0.0).loose_eq(&Key::Int(0).as_value()));
    }

    #[test]
    fn types_are_ranked() {
        assert_eq!(Value::Null.total_cmp(&Value::Bool(false)), Ordering::Less);
        assert_eq!(Value::Bool(true).total_cmp(&Value::Int(-5)), Ordering::Less);
        assert_eq!(Value::Int(99).total_cmp(&Value::Str("")), Ordering::Less);
    }

    #[test]
    fn keys_round_trip_json() {
        let j = serde_json::json!([1, 2.5, "a", null, true]);
        let k = Key::from_json(&j).expect("key");
        assert_eq!(k.to_json(), j);
        assert!(Key::from_json(&serde_json::json!({"a": 1})).is_none());
    }
}
