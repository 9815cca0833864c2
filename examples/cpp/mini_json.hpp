// A small JSON reader: enough for nsr.json (objects, arrays, strings, numbers, true/false/null).
#pragma once
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace mini_json {

struct Value {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string text;
  std::vector<Value> items;
  std::map<std::string, Value> fields;

  bool is_null() const { return kind == Null; }
  bool has(const std::string& key) const { return kind == Object && fields.count(key) > 0; }
  const Value& operator[](const std::string& key) const {
    auto it = fields.find(key);
    if (kind != Object || it == fields.end()) throw std::runtime_error("nsr.json: missing field '" + key + "'");
    return it->second;
  }
  int as_int() const {
    if (kind != Number) throw std::runtime_error("nsr.json: a number was expected");
    return static_cast<int>(number);
  }
  double as_double() const {
    if (kind != Number) throw std::runtime_error("nsr.json: a number was expected");
    return number;
  }
};

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  Value parse() {
    Value v = value();
    space();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;

  [[noreturn]] void fail(const char* why) {
    throw std::runtime_error(std::string("nsr.json: ") + why + " at offset " + std::to_string(i_));
  }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  bool take(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  Value value() {
    space();
    if (i_ >= s_.size()) fail("unexpected end");
    Value v;
    char c = s_[i_];
    if (c == '{') {
      v.kind = Value::Object;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      for (;;) {
        space();
        std::string key = string();
        space();
        if (i_ >= s_.size() || s_[i_++] != ':') fail("':' expected");
        v.fields[key] = value();
        space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
        fail("',' or '}' expected");
      }
    }
    if (c == '[') {
      v.kind = Value::Array;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      for (;;) {
        v.items.push_back(value());
        space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
        fail("',' or ']' expected");
      }
    }
    if (c == '"') { v.kind = Value::String; v.text = string(); return v; }
    if (take("true")) { v.kind = Value::Bool; v.boolean = true; return v; }
    if (take("false")) { v.kind = Value::Bool; return v; }
    if (take("null")) return v;
    const char* start = s_.c_str() + i_;
    char* end = nullptr;
    v.number = std::strtod(start, &end);
    if (end == start) fail("a value expected");
    v.kind = Value::Number;
    i_ += static_cast<size_t>(end - start);
    return v;
  }
  std::string string() {
    if (i_ >= s_.size() || s_[i_] != '"') fail("'\"' expected");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {  // kept as '?': nsr.json's non-ASCII text is descriptive only
          if (i_ + 4 > s_.size()) fail("bad \\u escape");
          i_ += 4;
          out += '?';
          break;
        }
        default: out += e;
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
};

inline Value parse(const std::string& text) { return Parser(text).parse(); }

}  // namespace mini_json
