//! The tool registry's settings: its keyring (read from a file so that
//! rotation is a file change), the price of fuel, and the module size
//! limit, checked before any port is bound.

use std::path::PathBuf;

use soma_sign::HmacKeyring;

use crate::error::RegistryError;

/// Environment variable naming the registry's HMAC keyring file.
pub const KEYS_FILE_ENV: &str = "SOMA_TOOL_REGISTRY_KEYS_FILE";
/// Environment variable: ISO 4217 currency of billing events.
pub const CURRENCY_ENV: &str = "SOMA_TOOL_REGISTRY_CURRENCY";
/// Environment variable: price of one million fuel units, in micro-units.
pub const PRICE_ENV: &str = "SOMA_TOOL_REGISTRY_MICROS_PER_MILLION_FUEL";
/// Environment variable: the largest module accepted, bytes.
pub const MAX_MODULE_ENV: &str = "SOMA_TOOL_REGISTRY_MAX_MODULE_BYTES";

/// Default largest module: 4 MiB.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 4 * 1024 * 1024;

/// The tool registry's own settings.
#[derive(Debug)]
pub struct RegistryConfig {
    /// Seals releases (over the manifest digest) and MACs every row.
    pub keys: HmacKeyring,
    /// Where the keyring was read from.
    pub keys_path: PathBuf,
    /// What executions are billed for.
    pub price: Price,
    /// The largest module a release may carry, bytes.
    pub max_module_bytes: u64,
}

/// The price of fuel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Price {
    /// ISO 4217 code.
    pub currency: String,
    /// Micro-units per million fuel units.
    pub micros_per_million_fuel: u64,
}

impl Default for Price {
    fn default() -> Self {
        Self {
            currency: "EUR".to_owned(),
            micros_per_million_fuel: 1_000,
        }
    }
}

impl Price {
    /// The amount, in micro-units, of `fuel` consumed: rounded up, so an
    /// execution that consumed any fuel is never free.
    pub fn of_fuel(&self, fuel: u64) -> i64 {
        let micros = u128::from(fuel) * u128::from(self.micros_per_million_fuel);
        i64::try_from(micros.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }
}

impl RegistryConfig {
    /// Reads [`KEYS_FILE_ENV`] (required), [`CURRENCY_ENV`], [`PRICE_ENV`]
    /// and [`MAX_MODULE_ENV`].
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, RegistryError> {
        let value = |var: &str| env(var).filter(|v| !v.is_empty());
        let keys_path = value(KEYS_FILE_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| RegistryError::Config(format!("{KEYS_FILE_ENV} is not set")))?;
        let keys = HmacKeyring::load(&keys_path)
            .map_err(|e| RegistryError::Config(format!("{}: {e}", keys_path.display())))?;
        let mut price = Price::default();
        if let Some(currency) = value(CURRENCY_ENV) {
            if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(RegistryError::Config(format!(
                    "{CURRENCY_ENV}={currency:?}: an ISO 4217 code of three capital letters is expected"
                )));
            }
            price.currency = currency;
        }
        if let Some(micros) = value(PRICE_ENV) {
            price.micros_per_million_fuel = micros.parse().map_err(|_| {
                RegistryError::Config(format!("{PRICE_ENV}={micros:?}: a whole number is expected"))
            })?;
        }
        let max_module_bytes = match value(MAX_MODULE_ENV) {
            None => DEFAULT_MAX_MODULE_BYTES,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(RegistryError::Config(format!(
                        "{MAX_MODULE_ENV}={v:?}: a positive number of bytes is expected"
                    )));
                }
            },
        };
        Ok(Self {
            keys,
            keys_path,
            price,
            max_module_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_is_billed_rounded_up() {
        let price = Price {
            currency: "EUR".into(),
            micros_per_million_fuel: 1_000,
        };
        assert_eq!(price.of_fuel(0), 0);
        assert_eq!(price.of_fuel(1), 1);
        assert_eq!(price.of_fuel(1_000), 1);
        assert_eq!(price.of_fuel(1_001), 2);
        assert_eq!(price.of_fuel(2_000_000), 2_000);
        assert_eq!(price.of_fuel(u64::MAX), 18_446_744_073_709_552);
    }
}
