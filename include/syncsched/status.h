// Status and Result<T>: how every fallible syncsched call reports failure.
//
// Errors a caller can plan for are returned, never thrown across the API. A Status is OK (cheap:
// no allocation) or carries a code from the small vocabulary below, a message that names the
// offending input, and a machine-readable subject saying which input that is (so that a caller,
// such as the HTTP daemon, can tell "unknown connection" from "unknown sync" without parsing the
// message or asking again). Result<T> holds either a T or a non-OK Status.
//
// Thread safety: Status and Result are values; distinct objects may be used from distinct threads
// freely, and const access to one object from many threads is safe.
#pragma once

#include <cassert>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "syncsched/export.h"

namespace syncsched {

// The error vocabulary. When to use each:
enum class StatusCode {
  kOk = 0,
  // The request itself is wrong whatever the state: a malformed name or frequency, a frequency
  // outside the bounds, a duplicate item. Retrying the same request fails again.
  kInvalidArgument,
  // Something the request names does not exist: an integration, sync, connection or variant.
  kNotFound,
  // The request would create something that exists: a connection or variant.
  kAlreadyExists,
  // The request is well formed but the state forbids it: a database from a newer schema, an engine
  // that is shut down. (Creating or deleting the `base` variant is INVALID_ARGUMENT: the request
  // is wrong whatever the state.)
  kFailedPrecondition,
  // A resource is (perhaps temporarily) not available: the database is locked by another engine,
  // the disk is full, a file cannot be opened.
  kUnavailable,
  // The operation was cancelled (a run cancelled through its token).
  kCancelled,
  // A deadline passed (a run outlived its timeout or missed its heartbeat deadline).
  kDeadlineExceeded,
  // An invariant broke or a dependency failed in a way the caller cannot fix (a corrupt database).
  kInternal,
};

// "OK", "INVALID_ARGUMENT", ...: the stable spelling used in logs and on the wire.
SYNCSCHED_EXPORT std::string_view StatusCodeName(StatusCode code);

// Which input of a call an error is about. The engine sets it on every INVALID_ARGUMENT,
// NOT_FOUND and ALREADY_EXISTS that concerns a named input:
//   - a malformed name: INVALID_ARGUMENT with the name's part of the key;
//   - a well-formed name that does not exist: NOT_FOUND with the first missing part, checked in
//     the order integration, sync, connection, variant (a variant NOT_FOUND means the sync and
//     connection exist but that variant's schedule does not);
//   - ALREADY_EXISTS: kConnection or kVariant;
//   - another bad argument (a frequency, a timeout, an option): kField, with Status::field()
//     naming it ("frequency", "timeout", "horizon", "options.worker_threads", ...).
// kNone: the error is not about one input (UNAVAILABLE, INTERNAL, a shut-down engine, ...).
enum class StatusSubject : std::uint8_t {
  kNone = 0,
  kIntegration,
  kConnection,
  kSync,
  kVariant,
  kField,
};

// "none", "integration", "connection", "sync", "variant", "field".
SYNCSCHED_EXPORT std::string_view StatusSubjectName(StatusSubject subject);

class [[nodiscard]] SYNCSCHED_EXPORT Status {
 public:
  Status() = default;  // OK
  // `field` is kept only with StatusSubject::kField.
  Status(StatusCode code, std::string message, StatusSubject subject = StatusSubject::kNone,
         std::string field = {});

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg, StatusSubject subject = StatusSubject::kNone) {
    return {StatusCode::kInvalidArgument, std::move(msg), subject};
  }
  // INVALID_ARGUMENT about the field `field` (subject kField).
  static Status InvalidField(std::string field, std::string msg) {
    return {StatusCode::kInvalidArgument, std::move(msg), StatusSubject::kField, std::move(field)};
  }
  static Status NotFound(std::string msg, StatusSubject subject = StatusSubject::kNone) {
    return {StatusCode::kNotFound, std::move(msg), subject};
  }
  static Status AlreadyExists(std::string msg, StatusSubject subject = StatusSubject::kNone) {
    return {StatusCode::kAlreadyExists, std::move(msg), subject};
  }
  static Status FailedPrecondition(std::string msg) {
    return {StatusCode::kFailedPrecondition, std::move(msg)};
  }
  static Status Unavailable(std::string msg) { return {StatusCode::kUnavailable, std::move(msg)}; }
  static Status Cancelled(std::string msg) { return {StatusCode::kCancelled, std::move(msg)}; }
  static Status DeadlineExceeded(std::string msg) {
    return {StatusCode::kDeadlineExceeded, std::move(msg)};
  }
  static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }

  bool ok() const { return rep_ == nullptr; }
  StatusCode code() const { return rep_ ? rep_->code : StatusCode::kOk; }
  // Empty for OK.
  const std::string& message() const;
  // Which input the error is about (see StatusSubject); kNone for OK.
  StatusSubject subject() const { return rep_ ? rep_->subject : StatusSubject::kNone; }
  // The field's name when subject() is kField, else empty.
  const std::string& field() const;
  // A copy of this error about `subject` (and `field`, for kField); OK stays OK.
  Status WithSubject(StatusSubject subject, std::string field = {}) const;

  bool IsInvalidArgument() const { return code() == StatusCode::kInvalidArgument; }
  bool IsNotFound() const { return code() == StatusCode::kNotFound; }
  bool IsAlreadyExists() const { return code() == StatusCode::kAlreadyExists; }
  bool IsFailedPrecondition() const { return code() == StatusCode::kFailedPrecondition; }
  bool IsUnavailable() const { return code() == StatusCode::kUnavailable; }

  // "OK" or "INVALID_ARGUMENT: <message>".
  std::string ToString() const;

  // Code, message, subject and field all equal.
  friend bool operator==(const Status& a, const Status& b) {
    return a.code() == b.code() && a.message() == b.message() && a.subject() == b.subject() &&
           a.field() == b.field();
  }

 private:
  struct Rep {
    StatusCode code;
    std::string message;
    StatusSubject subject = StatusSubject::kNone;
    std::string field;
  };
  std::shared_ptr<const Rep> rep_;  // null when OK; shared so that copies are cheap
};

inline std::ostream& operator<<(std::ostream& os, const Status& s) { return os << s.ToString(); }

// What Result<T>::value() throws when the Result holds an error: a programming error (the caller
// should have tested ok()), so it is thrown rather than returned. Carries the Status; what() is its
// text, "NOT_FOUND: connection \"x\" does not exist".
class SYNCSCHED_EXPORT BadResultAccess : public std::exception {
 public:
  explicit BadResultAccess(Status status) : status_(std::move(status)), what_(status_.ToString()) {}
  const Status& status() const noexcept { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  Status status_;
  std::string what_;
};

// Either a value or a non-OK Status. Constructing a Result from an OK Status is a programming
// error (asserted in debug builds; becomes an INTERNAL error in release builds).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}        // NOLINT: implicit
  Result(Status status) : v_(std::in_place_index<1>, std::move(status)) {  // NOLINT: implicit
    assert(!std::get<1>(v_).ok());
    if (std::get<1>(v_).ok())
      v_.template emplace<1>(Status::Internal("Result built from an OK status"));
  }

  bool ok() const { return v_.index() == 0; }
  // OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<1>(v_); }

  // The value. Throws BadResultAccess (carrying the status) when an error is held; so do `*` and
  // `->`, which are value().
  T& value() & {
    CheckOk();
    return std::get<0>(v_);
  }
  const T& value() const& {
    CheckOk();
    return std::get<0>(v_);
  }
  T&& value() && {
    CheckOk();
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  void CheckOk() const {
    if (!ok()) throw BadResultAccess(std::get<1>(v_));
  }
  std::variant<T, Status> v_;
};

}  // namespace syncsched
