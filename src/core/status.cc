// Status: the non-inline parts of include/syncsched/status.h.
#include "syncsched/status.h"

#include <string>
#include <string_view>
#include <utility>

namespace syncsched {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "OK";
    case StatusCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case StatusCode::kNotFound:
      return "NOT_FOUND";
    case StatusCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case StatusCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case StatusCode::kUnavailable:
      return "UNAVAILABLE";
    case StatusCode::kCancelled:
      return "CANCELLED";
    case StatusCode::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case StatusCode::kInternal:
      return "INTERNAL";
  }
  return "UNKNOWN";  // a value cast from outside the enumeration
}

std::string_view StatusSubjectName(StatusSubject subject) {
  switch (subject) {
    case StatusSubject::kNone:
      return "none";
    case StatusSubject::kIntegration:
      return "integration";
    case StatusSubject::kConnection:
      return "connection";
    case StatusSubject::kSync:
      return "sync";
    case StatusSubject::kVariant:
      return "variant";
    case StatusSubject::kField:
      return "field";
  }
  return "unknown";
}

namespace {
const std::string& Empty() {
  static const std::string* const kEmpty = new std::string();  // never destroyed
  return *kEmpty;
}
}  // namespace

Status::Status(StatusCode code, std::string message, StatusSubject subject, std::string field) {
  // An OK code always yields the canonical (allocation-free) OK status; its message is dropped.
  if (code == StatusCode::kOk) return;
  if (subject != StatusSubject::kField) field.clear();
  rep_ = std::make_shared<const Rep>(Rep{code, std::move(message), subject, std::move(field)});
}

const std::string& Status::message() const { return rep_ ? rep_->message : Empty(); }

const std::string& Status::field() const { return rep_ ? rep_->field : Empty(); }

Status Status::WithSubject(StatusSubject subject, std::string field) const {
  if (ok()) return *this;
  return Status(rep_->code, rep_->message, subject, std::move(field));
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string out(StatusCodeName(rep_->code));
  out += ": ";
  out += rep_->message;
  return out;
}

}  // namespace syncsched
