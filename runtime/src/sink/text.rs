//! Records as text, the way Spark Streaming prints them: pairs as `(key,value)`.

/// Writes a record as text.
pub trait ToText {
    /// Appends the text of `self` to `out`.
    fn write_text(&self, out: &mut String);

    /// The text of `self`.
    fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }
}

impl ToText for String {
    fn write_text(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl ToText for &str {
    fn write_text(&self, out: &mut String) {
        out.push_str(self);
    }
}

macro_rules! display_text {
    ($($t:ty),*) => {$(
        impl ToText for $t {
            fn write_text(&self, out: &mut String) {
                use std::fmt::Write;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
display_text!(i32, i64, u32, u64, usize, f64, bool, char);

impl<A: ToText, B: ToText> ToText for (A, B) {
    fn write_text(&self, out: &mut String) {
        out.push('(');
        self.0.write_text(out);
        out.push(',');
        self.1.write_text(out);
        out.push(')');
    }
}

impl<A: ToText> ToText for Option<A> {
    fn write_text(&self, out: &mut String) {
        match self {
            Some(a) => a.write_text(out),
            None => out.push_str("None"),
        }
    }
}

impl<A: ToText> ToText for Vec<A> {
    fn write_text(&self, out: &mut String) {
        out.push('[');
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            a.write_text(out);
        }
        out.push(']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_print_like_spark() {
        assert_eq!(("a".to_string(), 3u64).to_text(), "(a,3)");
        assert_eq!(vec![1i64, 2].to_text(), "[1,2]");
    }
}
