#include "store/fault_vfs.h"

#include <sqlite3.h>

#include <array>
#include <cstddef>
#include <cstring>
#include <mutex>
#include <string>

namespace syncsched::store::testing {
namespace {

constexpr std::size_t kKinds = 4;  // kMainDb .. kOther
constexpr std::size_t kOps = static_cast<std::size_t>(Op::kCount);

struct State {
  std::mutex mu;
  bool armed = false;
  Fault fault;
  std::uint64_t matched = 0;  // matching calls since Arm
  std::uint64_t fired = 0;
  std::array<std::array<std::uint64_t, kOps>, kKinds> counts{};
};

State& state() {
  static auto* s = new State;  // never destroyed: SQLite may call in after static destruction
  return *s;
}

sqlite3_vfs* root = nullptr;  // the VFS below ("unix")

// A file of this VFS: the real file follows it in the same allocation (szOsFile covers both).
struct File {
  sqlite3_file base;
  FileKind kind;
  sqlite3_file* real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
};
static_assert(sizeof(File) % alignof(std::max_align_t) == 0 || sizeof(File) % 8 == 0);

File* AsFile(sqlite3_file* f) { return reinterpret_cast<File*>(f); }

FaultVfs::Decision Decide(sqlite3_file* f, Op op) {
  return FaultVfs::Get().OnCall(AsFile(f)->kind, op);
}

int Close(sqlite3_file* f) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods != nullptr ? real->pMethods->xClose(real) : SQLITE_OK;
}

int Read(sqlite3_file* f, void* buffer, int n, sqlite3_int64 offset) {
  auto d = Decide(f, Op::kRead);
  if (d.fail && d.effect == Effect::kError) return d.rc;
  sqlite3_file* real = AsFile(f)->real();
  int rc = real->pMethods->xRead(real, buffer, n, offset);
  if (!d.fail || (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ)) return rc;
  auto* bytes = static_cast<unsigned char*>(buffer);
  if (d.effect == Effect::kShortRead) {
    std::memset(bytes + n / 2, 0, static_cast<std::size_t>(n - n / 2));
    return SQLITE_IOERR_SHORT_READ;
  }
  for (int i = 0; i < n; ++i) bytes[i] = static_cast<unsigned char>(0xA5 ^ (i * 7));
  return rc;
}

int Write(sqlite3_file* f, const void* buffer, int n, sqlite3_int64 offset) {
  if (auto d = Decide(f, Op::kWrite); d.fail) return d.rc;
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xWrite(real, buffer, n, offset);
}

int Truncate(sqlite3_file* f, sqlite3_int64 size) {
  if (auto d = Decide(f, Op::kTruncate); d.fail) return d.rc;
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xTruncate(real, size);
}

int Sync(sqlite3_file* f, int flags) {
  if (auto d = Decide(f, Op::kSync); d.fail) return d.rc;
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xSync(real, flags);
}

int FileSize(sqlite3_file* f, sqlite3_int64* size) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xFileSize(real, size);
}

int Lock(sqlite3_file* f, int level) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xLock(real, level);
}

int Unlock(sqlite3_file* f, int level) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xUnlock(real, level);
}

int CheckReservedLock(sqlite3_file* f, int* out) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xCheckReservedLock(real, out);
}

int FileControl(sqlite3_file* f, int op, void* arg) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xFileControl(real, op, arg);
}

int SectorSize(sqlite3_file* f) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xSectorSize(real);
}

int DeviceCharacteristics(sqlite3_file* f) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xDeviceCharacteristics(real);
}

int ShmMap(sqlite3_file* f, int region, int size, int extend, void volatile** out) {
  if (auto d = Decide(f, Op::kShmMap); d.fail) return d.rc;
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xShmMap(real, region, size, extend, out);
}

int ShmLock(sqlite3_file* f, int offset, int n, int flags) {
  // Only acquiring can fail: a failed release would leave SQLite's view of its locks wrong.
  if ((flags & SQLITE_SHM_LOCK) != 0) {
    if (auto d = Decide(f, Op::kShmLock); d.fail) return d.rc;
  }
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xShmLock(real, offset, n, flags);
}

void ShmBarrier(sqlite3_file* f) {
  sqlite3_file* real = AsFile(f)->real();
  real->pMethods->xShmBarrier(real);
}

int ShmUnmap(sqlite3_file* f, int remove) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xShmUnmap(real, remove);
}

int Fetch(sqlite3_file* f, sqlite3_int64 offset, int n, void** out) {
  // No memory-mapped reads: every read goes through Read, where faults are injected.
  (void)f;
  (void)offset;
  (void)n;
  *out = nullptr;
  return SQLITE_OK;
}

int Unfetch(sqlite3_file* f, sqlite3_int64 offset, void* p) {
  sqlite3_file* real = AsFile(f)->real();
  return real->pMethods->xUnfetch(real, offset, p);
}

const sqlite3_io_methods kMethods = {3,
                                     Close,
                                     Read,
                                     Write,
                                     Truncate,
                                     Sync,
                                     FileSize,
                                     Lock,
                                     Unlock,
                                     CheckReservedLock,
                                     FileControl,
                                     SectorSize,
                                     DeviceCharacteristics,
                                     ShmMap,
                                     ShmLock,
                                     ShmBarrier,
                                     ShmUnmap,
                                     Fetch,
                                     Unfetch};

FileKind KindOf(int flags) {
  if ((flags & SQLITE_OPEN_MAIN_DB) != 0) return FileKind::kMainDb;
  if ((flags & SQLITE_OPEN_WAL) != 0) return FileKind::kWal;
  if ((flags & SQLITE_OPEN_MAIN_JOURNAL) != 0) return FileKind::kJournal;
  return FileKind::kOther;
}

int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  File* file = AsFile(f);
  file->base.pMethods = nullptr;
  file->kind = KindOf(flags);
  if (auto d = FaultVfs::Get().OnCall(file->kind, Op::kOpen); d.fail) return d.rc;
  int rc = root->xOpen(root, name, file->real(), flags, out_flags);
  if (file->real()->pMethods != nullptr) file->base.pMethods = &kMethods;
  return rc;
}

int Delete(sqlite3_vfs*, const char* name, int sync_dir) {
  return root->xDelete(root, name, sync_dir);
}
int Access(sqlite3_vfs*, const char* name, int flags, int* out) {
  return root->xAccess(root, name, flags, out);
}
int FullPathname(sqlite3_vfs*, const char* name, int n, char* out) {
  return root->xFullPathname(root, name, n, out);
}
void* DlOpen(sqlite3_vfs*, const char* name) { return root->xDlOpen(root, name); }
void DlError(sqlite3_vfs*, int n, char* out) { root->xDlError(root, n, out); }
void (*DlSym(sqlite3_vfs*, void* handle, const char* symbol))(void) {
  return root->xDlSym(root, handle, symbol);
}
void DlClose(sqlite3_vfs*, void* handle) { root->xDlClose(root, handle); }
int Randomness(sqlite3_vfs*, int n, char* out) { return root->xRandomness(root, n, out); }
int Sleep(sqlite3_vfs*, int us) { return root->xSleep(root, us); }
int CurrentTime(sqlite3_vfs*, double* out) { return root->xCurrentTime(root, out); }
int GetLastError(sqlite3_vfs*, int n, char* out) { return root->xGetLastError(root, n, out); }
int CurrentTimeInt64(sqlite3_vfs*, sqlite3_int64* out) {
  return root->xCurrentTimeInt64(root, out);
}

sqlite3_vfs vfs = {};

}  // namespace

const char* KindName(FileKind kind) {
  switch (kind) {
    case FileKind::kMainDb:
      return "main db";
    case FileKind::kWal:
      return "WAL";
    case FileKind::kJournal:
      return "journal";
    case FileKind::kOther:
      return "other file";
    case FileKind::kAny:
      return "any file";
  }
  return "?";
}

const char* OpName(Op op) {
  switch (op) {
    case Op::kOpen:
      return "open";
    case Op::kRead:
      return "read";
    case Op::kWrite:
      return "write";
    case Op::kSync:
      return "sync";
    case Op::kTruncate:
      return "truncate";
    case Op::kShmMap:
      return "shm map";
    case Op::kShmLock:
      return "shm lock";
    case Op::kCount:
      break;
  }
  return "?";
}

std::string Fault::Describe() const {
  std::string what =
      std::string(OpName(op)) + " of the " + KindName(kind) + " #" + std::to_string(after + 1);
  switch (effect) {
    case Effect::kError:
      return what + " fails with " + sqlite3_errstr(rc) + " (" + std::to_string(rc) + ")";
    case Effect::kShortRead:
      return what + " is short";
    case Effect::kGarbage:
      return what + " reads garbage";
  }
  return what;
}

FaultVfs::FaultVfs() {
  root = sqlite3_vfs_find(nullptr);
  vfs.iVersion = 2;
  vfs.szOsFile = static_cast<int>(sizeof(File)) + root->szOsFile;
  vfs.mxPathname = root->mxPathname;
  vfs.zName = kName;
  vfs.xOpen = Open;
  vfs.xDelete = Delete;
  vfs.xAccess = Access;
  vfs.xFullPathname = FullPathname;
  vfs.xDlOpen = DlOpen;
  vfs.xDlError = DlError;
  vfs.xDlSym = DlSym;
  vfs.xDlClose = DlClose;
  vfs.xRandomness = Randomness;
  vfs.xSleep = Sleep;
  vfs.xCurrentTime = CurrentTime;
  vfs.xGetLastError = GetLastError;
  vfs.xCurrentTimeInt64 = CurrentTimeInt64;
  sqlite3_vfs_register(&vfs, /*makeDflt=*/0);
}

FaultVfs& FaultVfs::Get() {
  static auto* instance = new FaultVfs;  // registered with SQLite for the life of the process
  return *instance;
}

void FaultVfs::Arm(const Fault& fault) {
  std::lock_guard lock(state().mu);
  state().armed = true;
  state().fault = fault;
  state().matched = 0;
  state().fired = 0;
}

void FaultVfs::Disarm() {
  std::lock_guard lock(state().mu);
  state().armed = false;
}

std::uint64_t FaultVfs::fired() const {
  std::lock_guard lock(state().mu);
  return state().fired;
}

std::uint64_t FaultVfs::Count(FileKind kind, Op op) const {
  std::lock_guard lock(state().mu);
  std::uint64_t n = 0;
  for (std::size_t k = 0; k < kKinds; ++k) {
    if (kind == FileKind::kAny || static_cast<std::size_t>(kind) == k) {
      n += state().counts[k][static_cast<std::size_t>(op)];
    }
  }
  return n;
}

void FaultVfs::ResetCounts() {
  std::lock_guard lock(state().mu);
  state().counts = {};
}

FaultVfs::Decision FaultVfs::OnCall(FileKind kind, Op op) {
  std::lock_guard lock(state().mu);
  State& s = state();
  ++s.counts[static_cast<std::size_t>(kind)][static_cast<std::size_t>(op)];
  Decision d;
  if (!s.armed || s.fault.op != op || (s.fault.kind != FileKind::kAny && s.fault.kind != kind)) {
    return d;
  }
  std::uint64_t n = s.matched++;
  if (n < s.fault.after) return d;
  if (s.fault.times != Fault::kForever && n - s.fault.after >= s.fault.times) return d;
  ++s.fired;
  d.fail = true;
  d.effect = s.fault.effect;
  d.rc = s.fault.rc;
  return d;
}

}  // namespace syncsched::store::testing
