#include "store/store.h"

#include <charconv>
#include <string_view>

namespace syncsched::store {

std::optional<TakenSlot> SlotTaken(const Status& status) {
  if (status.code() != StatusCode::kFailedPrecondition) return std::nullopt;
  std::string_view m = status.message();
  if (m.find(kSlotTakenMarker) == std::string_view::npos) return std::nullopt;
  // The DETAIL the server adds: "(schedule uid <uid> slot <slot>)".
  constexpr std::string_view kUid = "(schedule uid ";
  constexpr std::string_view kSlot = " slot ";
  auto at = m.rfind(kUid);
  if (at == std::string_view::npos) return std::nullopt;
  TakenSlot taken;
  const char* p = m.data() + at + kUid.size();
  const char* end = m.data() + m.size();
  auto [after_uid, e1] = std::from_chars(p, end, taken.uid);
  if (e1 != std::errc() || std::string_view(after_uid, static_cast<std::size_t>(end - after_uid))
                                   .substr(0, kSlot.size()) != kSlot) {
    return std::nullopt;
  }
  auto [after_slot, e2] = std::from_chars(after_uid + kSlot.size(), end, taken.slot);
  if (e2 != std::errc() || after_slot == end || *after_slot != ')') return std::nullopt;
  return taken;
}

}  // namespace syncsched::store
