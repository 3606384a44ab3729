//! How every route reads its input, so the rules hold in one place and a new route
//! cannot forget them:
//!
//! - [`Json`] (a required body) and [`OptionalJson`] (an empty body means no
//!   fields) need `Content-Type: application/json`, read at most the route's
//!   [`BodyLimit`], and accept a JSON **object** only: an array or a scalar is
//!   refused, at the top and for every nested struct, so serde's positional form
//!   of a struct (`["acme/app", true]`) never reaches a handler.
//! - Their errors name the field and the expected type and never quote the value
//!   sent (it may be a secret): the body is parsed into a `serde_json::Value`,
//!   then deserialized through [`Strict`], whose error type records what serde
//!   reports without the value.
//! - [`Query`] marks the request as one whose query string was read. The
//!   [`query_rule`] middleware refuses a query string on a route that did not
//!   read one, so an unknown parameter is never silently ignored.
//! - [`RawBody`] is the limited raw body, for routes that verify bytes
//!   (webhooks).

use std::fmt;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::mime;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::Value;

use crate::error::AppError;

/// The largest body a route reads, in bytes: `server.max_body_bytes` for the
/// app, more for the webhook route (set as resource data).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A required JSON object body, deserialized strictly into `T`.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, mut payload) = (req.clone(), payload.take());
        Box::pin(async move {
            require_json(&req)?;
            let bytes = read_body(&req, &mut payload).await?;
            parse(&bytes).map(Json)
        })
    }
}

/// An optional JSON object body: an empty (or whitespace) body is `T::default()`
/// and needs no `Content-Type`; anything else is read as [`Json`] is.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, mut payload) = (req.clone(), payload.take());
        Box::pin(async move {
            let bytes = read_body(&req, &mut payload).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJson(T::default()));
            }
            require_json(&req)?;
            parse(&bytes).map(OptionalJson)
        })
    }
}

/// The raw body, at most the route's [`BodyLimit`], with no other check.
#[derive(Debug)]
pub struct RawBody(pub Bytes);

impl FromRequest for RawBody {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (req, mut payload) = (req.clone(), payload.take());
        Box::pin(async move { read_body(&req, &mut payload).await.map(RawBody) })
    }
}

/// The query string, deserialized into `T` (whose unknown fields are refused).
/// Taking this extractor is how a route declares that it reads a query string.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Marks a request whose query string a route read (see [`query_rule`]).
#[derive(Debug, Clone, Copy)]
struct QueryRead;

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        req.extensions_mut().insert(QueryRead);
        std::future::ready(
            actix_web::web::Query::<T>::from_query(req.query_string())
                .map(|q| Query(q.into_inner()))
                .map_err(|e| AppError::bad_request("invalid_query", format!("bad query string: {e}"))),
        )
    }
}

/// Middleware: a query string reaches only a route that reads one.
///
/// Only `GET` routes take query parameters. A query string on any other method is
/// refused before routing when a route would run for that method and path, so
/// nothing is changed; when none would, routing answers (404, or 405 with
/// `Allow`) and runs nothing. A `GET` route that did not read
/// the query (it takes no [`Query`]) has its answer replaced with the same 400:
/// reads change nothing, so the order documented in api.md holds (a bad query
/// beats 403, 404 and the rest). Unknown paths and wrong methods keep their 404
/// and 405.
pub async fn query_rule(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let query = req.query_string().to_string();
    if query.is_empty() {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        if !super::openapi::has_operation(req.method(), req.path()) {
            return next.call(req).await.map(ServiceResponse::map_into_left_body);
        }
        let err = no_query_here(req.method(), req.path(), &query);
        return Ok(req.into_response(err.error_response()).map_into_right_body());
    }
    let res = next.call(req).await?;
    let request = res.request();
    let unread = request.match_pattern().is_some()
        && !request.extensions().contains::<QueryRead>()
        && !matches!(res.status(), StatusCode::METHOD_NOT_ALLOWED | StatusCode::SWITCHING_PROTOCOLS);
    if !unread {
        return Ok(res.map_into_left_body());
    }
    let err = no_query_here(request.method(), request.path(), &query);
    let (req, _) = res.into_parts();
    Ok(ServiceResponse::new(req, err.error_response()).map_into_right_body())
}

fn no_query_here(method: &Method, path: &str, query: &str) -> AppError {
    // Parameter names only: a value may be a token.
    let names: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| crate::validate::truncate(p.split('=').next().unwrap_or(""), 40))
        .collect();
    AppError::bad_request(
        "invalid_query",
        format!(
            "{method} {} takes no query parameters; unknown: {}",
            crate::validate::truncate(path, 200),
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Whether the request says its body is JSON (`application/json` or
/// `application/*+json`).
fn require_json(req: &HttpRequest) -> Result<(), AppError> {
    let is_json = match req.mime_type() {
        Ok(Some(mime)) => {
            mime.type_() == mime::APPLICATION && (mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON))
        }
        _ => false,
    };
    if is_json {
        Ok(())
    } else {
        Err(AppError::bad_request("expected_json", "send the body as JSON with `Content-Type: application/json`"))
    }
}

/// Reads the whole body, refusing it as soon as it is larger than the route's limit.
async fn read_body(req: &HttpRequest, payload: &mut Payload) -> Result<Bytes, AppError> {
    let limit = req.app_data::<BodyLimit>().map(|l| l.0).ok_or_else(|| AppError::bug("no BodyLimit is configured"))?;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(AppError::PayloadTooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| AppError::bad_request("bad_body", format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(AppError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON object body into `T`; errors name fields and types, never values.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| AppError::bad_request("malformed_json", format!("the body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(AppError::invalid("invalid_body", format!("the body must be a JSON object, not {}", kind(&value))));
    }
    T::deserialize(Strict { value: &value, path: String::new() }).map_err(|e| AppError::invalid("invalid_body", e.to_string()))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A deserialization error that says where and what was expected, never the
/// value that was sent.
#[derive(Debug)]
pub struct BodyError {
    /// `secrets`, `automation.on_idle.push`, `commands[2]`; empty for the body itself.
    path: Option<String>,
    message: String,
}

impl BodyError {
    fn new(message: String) -> Self {
        BodyError { path: None, message }
    }

    /// Records where the error happened, unless a deeper value already did.
    fn at(mut self, path: &str) -> Self {
        self.path.get_or_insert_with(|| path.to_string());
        self
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path.as_deref() {
            Some(path) if !path.is_empty() => write!(f, "`{path}`: {}", self.message),
            _ => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for BodyError {}

/// What a value was, in JSON's words, without the value.
fn described(unexp: de::Unexpected<'_>) -> &'static str {
    use de::Unexpected as U;
    match unexp {
        U::Bool(_) => "a boolean",
        U::Unsigned(_) | U::Signed(_) => "an integer",
        U::Float(_) => "a number",
        U::Char(_) | U::Str(_) => "a string",
        U::Bytes(_) => "bytes",
        U::Unit => "null",
        U::Seq => "an array",
        U::Map => "an object",
        _ => "a value of another kind",
    }
}

/// What was expected, in JSON's words where serde speaks Rust.
fn expected(exp: &dyn de::Expected) -> String {
    let text = exp.to_string();
    if text.starts_with("struct ") || text == "a map" {
        "an object".into()
    } else if text == "a sequence" {
        "an array".into()
    } else {
        text
    }
}

fn one_of(names: &'static [&'static str]) -> String {
    match names {
        [] => "no fields".into(),
        names => format!("one of {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")),
    }
}

impl de::Error for BodyError {
    /// Messages of our own types' and serde's internals; none quotes a value.
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BodyError::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        BodyError::new(format!("expected {}, got {}", expected(exp), described(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        BodyError::new(format!("expected {}; the {} given is not one", expected(exp), described(unexp).trim_start_matches("a ").trim_start_matches("an ")))
    }

    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        BodyError::new(format!("expected {}, got {len} elements", expected(exp)))
    }

    fn unknown_variant(_variant: &str, names: &'static [&'static str]) -> Self {
        BodyError::new(format!("unknown value, expected {}", one_of(names)))
    }

    fn unknown_field(field: &str, names: &'static [&'static str]) -> Self {
        BodyError::new(format!("unknown field `{}`, expected {}", crate::validate::truncate(field, 64), one_of(names)))
    }

    fn missing_field(field: &'static str) -> Self {
        BodyError::new(format!("missing field `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        BodyError::new(format!("duplicate field `{field}`"))
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// A `serde_json::Value` as a deserializer that refuses an array where a struct
/// is expected, and whose errors carry the path instead of the value.
struct Strict<'a> {
    value: &'a Value,
    path: String,
}

impl<'de> de::Deserializer<'de> for Strict<'_> {
    type Error = BodyError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BodyError> {
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => visitor.visit_u64(u),
                (None, Some(i), _) => visitor.visit_i64(i),
                // JSON has one number type: `5.0` is the integer 5 (as JSON Schema
                // says), so an integer field takes it. A fraction stays a float.
                (None, None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => visitor.visit_u64(f as u64),
                (None, None, Some(f)) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < 0.0 => visitor.visit_i64(f as i64),
                (None, None, Some(f)) => visitor.visit_f64(f),
                (None, None, None) => Err(de::Error::invalid_type(de::Unexpected::Other("number"), &visitor)),
            },
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => {
                let mut seq = SeqDe { items: items.iter().enumerate(), parent: &self.path };
                visitor.visit_seq(&mut seq).and_then(|out| match seq.items.len() {
                    0 => Ok(out),
                    _ => Err(de::Error::invalid_length(items.len(), &"fewer elements")),
                })
            }
            Value::Object(map) => visitor.visit_map(MapDe { items: map.iter(), current: None, parent: &self.path }),
        };
        result.map_err(|e| e.at(&self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BodyError> {
        let path = self.path.clone();
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e| e.at(&path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BodyError> {
        match self.value {
            // serde would take an array as the struct's fields in order.
            Value::Array(_) => Err(BodyError::new("expected an object, got an array".into()).at(&self.path)),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, BodyError> {
        let path = self.path.clone();
        match self.value {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Object(map) if map.len() == 1 => {
                let Some((variant, value)) = map.iter().next() else {
                    return Err(BodyError::new("expected an object with one key".into()));
                };
                visitor.visit_enum(EnumDe { variant, value, path: join(&self.path, variant) })
            }
            other => Err(BodyError::new(format!("expected a string or an object with one key, got {}", kind(other)))),
        }
        .map_err(|e| e.at(&path))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, BodyError> {
        let path = self.path.clone();
        visitor.visit_newtype_struct(self).map_err(|e| e.at(&path))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BodyError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct SeqDe<'a, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
    parent: &'p str,
}

impl<'de> de::SeqAccess<'de> for &mut SeqDe<'_, '_> {
    type Error = BodyError;

    fn next_element_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, BodyError> {
        match self.items.next() {
            Some((i, value)) => seed.deserialize(Strict { value, path: format!("{}[{i}]", self.parent) }).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapDe<'a, 'p> {
    items: serde_json::map::Iter<'a>,
    current: Option<(&'a String, &'a Value)>,
    parent: &'p str,
}

impl<'de> de::MapAccess<'de> for MapDe<'_, '_> {
    type Error = BodyError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, BodyError> {
        match self.items.next() {
            Some((key, value)) => {
                self.current = Some((key, value));
                seed.deserialize(key.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, BodyError> {
        let (key, value) = self.current.take().ok_or_else(|| BodyError::new("a value was read before its key".into()))?;
        seed.deserialize(Strict { value, path: join(self.parent, key) })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct EnumDe<'a> {
    variant: &'a String,
    value: &'a Value,
    path: String,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumDe<'a> {
    type Error = BodyError;
    type Variant = Strict<'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Strict<'a>), BodyError> {
        let variant = seed.deserialize(self.variant.as_str().into_deserializer())?;
        Ok((variant, Strict { value: self.value, path: self.path }))
    }
}

impl<'de> de::VariantAccess<'de> for Strict<'_> {
    type Error = BodyError;

    fn unit_variant(self) -> Result<(), BodyError> {
        match self.value {
            Value::Null => Ok(()),
            other => Err(BodyError::new(format!("expected null, got {}", kind(other))).at(&self.path)),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, BodyError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, BodyError> {
        de::Deserializer::deserialize_any(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, BodyError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::parse;
    use crate::error::AppError;

    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        count: u8,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        #[serde(default)]
        secrets: serde_json::Map<String, serde_json::Value>,
        #[serde(default)]
        inner: Inner,
        #[serde(default)]
        list: Vec<String>,
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Slow,
    }

    fn error(body: &str) -> (&'static str, String) {
        match parse::<Outer>(body.as_bytes()) {
            Err(AppError::Invalid { code, message }) | Err(AppError::BadRequest { code, message }) => (code, message),
            other => panic!("{body}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_body_parses() {
        let o: Outer = parse(br#"{"name": "x", "secrets": {"K": "v"}, "inner": {"flag": true, "count": 3}, "list": ["a"], "mode": "slow"}"#).unwrap();
        assert_eq!((o.name.as_str(), o.inner.flag, o.inner.count, o.list.len(), o.mode), ("x", true, 3, 1, Some(Mode::Slow)));
        assert_eq!(o.secrets["K"], "v");
    }

    #[test]
    fn values_are_never_quoted() {
        let secret = "sk-live-4242424242";
        for body in [
            format!(r#"{{"name": "x", "secrets": "{secret}"}}"#),
            format!(r#"{{"name": "{secret}", "secrets": ["{secret}"]}}"#),
            format!(r#"{{"name": "x", "inner": {{"flag": "{secret}"}}}}"#),
            format!(r#"{{"name": "x", "inner": {{"count": "{secret}"}}}}"#),
            format!(r#"{{"name": "x", "mode": "{secret}"}}"#),
            format!(r#"{{"name": "x", "list": [1, "{secret}", {{}}]}}"#),
            format!(r#"{{"name": ["{secret}"]}}"#),
            r#"{"name": "x", "inner": {"count": 4242424242}}"#.to_string(),
        ] {
            let (code, message) = error(&body);
            assert_eq!(code, "invalid_body", "{body}");
            assert!(!message.contains("sk-live") && !message.contains("4242"), "{body} → {message}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_expected_type() {
        assert_eq!(error(r#"{"name": "x", "secrets": "v"}"#).1, "`secrets`: expected an object, got a string");
        assert_eq!(error(r#"{"name": "x", "inner": {"flag": 1}}"#).1, "`inner.flag`: expected a boolean, got an integer");
        assert_eq!(error(r#"{"name": "x", "list": ["a", 2]}"#).1, "`list[1]`: expected a string, got an integer");
        assert_eq!(error(r#"{"name": ["x"]}"#).1, "`name`: expected a string, got an array");
        assert_eq!(error(r#"{"name": "x", "inner": {"count": 300}}"#).1, "`inner.count`: expected u8; the integer given is not one");
        assert_eq!(error(r#"{"name": "x", "mode": "medium"}"#).1, "`mode`: unknown value, expected one of `fast`, `slow`");
        assert_eq!(error(r#"{}"#).1, "missing field `name`");
        assert!(error(r#"{"name": "x", "titel": 1}"#).1.starts_with("unknown field `titel`, expected one of `name`"));
        assert!(error(r#"{"name": "x", "inner": {"nope": 1}}"#).1.starts_with("`inner`: unknown field `nope`"));
    }

    #[test]
    fn only_objects_are_bodies_and_structs() {
        for body in ["[]", r#"["x", {}]"#, "1", r#""x""#, "true", "null"] {
            let (code, message) = error(body);
            assert_eq!(code, "invalid_body", "{body}");
            assert!(message.starts_with("the body must be a JSON object"), "{body} → {message}");
        }
        // serde's positional form of a nested struct is refused too.
        assert_eq!(error(r#"{"name": "x", "inner": [true, 3]}"#).1, "`inner`: expected an object, got an array");
        assert_eq!(error("{\"na").0, "malformed_json");
    }
}
