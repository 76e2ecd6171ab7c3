//! Small macros the middlewares share.

/// The accessors of a middleware's inner service, as in tower: `get_ref`, `get_mut` and
/// `into_inner`, for a service `Foo<S>` that holds its inner service in a field `inner`.
/// Used inside `impl<S> Foo<S> { … }` (tower-http does the same).
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes the middleware, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub(crate) use inner_service_accessors;

/// Builder setters `pub fn $field(mut self, $field: $ty) -> Self` that set the field of the
/// same name. Used inside the builder's `impl`.
macro_rules! field_setters {
    ($($(#[$doc:meta])* $field:ident($arg:ident: $ty:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $field(mut self, $arg: $ty) -> Self {
                self.$field = $arg;
                self
            }
        )*
    };
}

pub(crate) use field_setters;

/// `Display` for types with an `as_str(self) -> &'static str` (`Copy` enums): writes it.
macro_rules! display_as_str {
    ($($ty:ty),+ $(,)?) => {
        $(
            impl std::fmt::Display for $ty {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(self.as_str())
                }
            }
        )+
    };
}

pub(crate) use display_as_str;

/// `Layer<S> for $layer`, whose service `$svc<S>` holds `inner` and the fields given, each
/// computed from the layer (`$l` names `&self`).
macro_rules! layer_impl {
    ($layer:ty => $svc:ident, |$l:ident| { $($field:ident: $value:expr),* $(,)? }) => {
        impl<S> tower_layer::Layer<S> for $layer {
            type Service = $svc<S>;

            fn layer(&self, inner: S) -> Self::Service {
                let $l = self;
                $svc {
                    inner,
                    $($field: $value),*
                }
            }
        }
    };
}

pub(crate) use layer_impl;

/// `Default` through `Self::new()`.
macro_rules! default_via_new {
    ($($ty:ty),+ $(,)?) => {
        $(
            impl Default for $ty {
                fn default() -> Self {
                    Self::new()
                }
            }
        )+
    };
}

pub(crate) use default_via_new;

/// `Debug for $ty` as `f.debug_struct($name)` with the fields given, each computed from the
/// value (`$s` names `&self`), ended with `$finish` (`finish` or `finish_non_exhaustive`).
/// A generic type starts with its parameters: `impl<S: fmt::Debug> Foo<S>, |s| …`.
macro_rules! debug_struct {
    (impl<$($g:ident $(: $bound:path)?),*> $ty:ty, |$s:ident| $name:literal { $($field:literal: $value:expr),* $(,)? } $finish:ident) => {
        impl<$($g $(: $bound)?),*> std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $s = self;
                f.debug_struct($name)$(.field($field, &$value))*.$finish()
            }
        }
    };
    ($ty:ty, |$s:ident| $name:literal { $($field:literal: $value:expr),* $(,)? } $finish:ident) => {
        $crate::macros::debug_struct!(impl<> $ty, |$s| $name { $($field: $value),* } $finish);
    };
}

pub(crate) use debug_struct;

/// A fieldless `Copy` enum whose variants each have a name: the enum, `as_str(self)` (with
/// the doc comments given before `fn as_str;`) returning the variant's name, and `Display`
/// writing it.
macro_rules! str_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $s:literal,)*
        }
        $(#[$as_meta:meta])*
        fn as_str;
    ) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            $(#[$as_meta])*
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s,)*
                }
            }
        }

        $crate::macros::display_as_str!($name);
    };
}

pub(crate) use str_enum;
