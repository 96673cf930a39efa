"""The config engine: typed dataclass schemas filled from YAML and `key=value` overrides (see ``core``)."""
from resdepth.config.core import (ConfigError, config_dir, config_hash, from_dict, iter_fields,
                                  load_config, opt, parse_overrides, to_dict, to_yaml)

__all__ = ["ConfigError", "config_dir", "config_hash", "from_dict", "iter_fields", "load_config",
           "opt", "parse_overrides", "to_dict", "to_yaml"]
