// Names of TOML value types for diagnostics ("expected a string, got an
// integer"), shared by every TOML loader (the QoS policy, the topology file).
//
// Header-only on purpose: common itself does not link toml++. Include it only
// from code that links dualpath_tomlplusplus.
//
// Threading: pure function.
#pragma once

#include <string_view>

#include <toml++/toml.h>

namespace dualpath {

// "a string", "an integer", ...: the article makes the message read as English.
inline std::string_view tomlTypeName(toml::node_type type) noexcept {
  switch (type) {
    case toml::node_type::none: return "nothing";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
  }
  return "a value";
}

}  // namespace dualpath
