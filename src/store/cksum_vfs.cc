// The page checksum VFS shim (see cksum_vfs.h).
#include "store/cksum_vfs.h"

#include <sqlite3.h>

#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace syncsched::store::cksum {
namespace {

thread_local std::string last_failure;

std::uint32_t Load32(const unsigned char* p) {
  // Little-endian whatever the host (so a file moves between hosts); memcpy: pages need not be
  // 4-byte aligned for the sanitizers' sake.
  std::uint32_t v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

void Store64(std::uint64_t v, unsigned char* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}

std::uint64_t Load64(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

bool IsPageSize(int n) { return n >= 512 && n <= 65536 && (n & (n - 1)) == 0; }

// ---- Files ----

enum class Kind { kMain, kWal, kOther };

// One open file of the shim. SQLite hands xOpen `szOsFile` bytes of raw memory: the File is
// constructed in place at their start (and destroyed by xClose, or by xOpen when it fails), the
// file of the VFS below follows at kFileBytes.
struct File {
  sqlite3_file base{};
  Kind kind = Kind::kOther;
  std::string name;  // for messages
  // Main file: whether its header reserves kReserveBytes per page (so its pages are checked).
  bool checked = false;
  std::vector<unsigned char> scratch;  // a page being written, with its checksum
  // WAL: the checksum of each frame's page written through this file, by file offset of the page.
  std::unordered_map<sqlite3_int64, std::uint64_t> frames;

  sqlite3_file* real();
};

constexpr std::size_t kFileBytes = (sizeof(File) + 15) & ~std::size_t{15};

sqlite3_file* File::real() {
  return reinterpret_cast<sqlite3_file*>(reinterpret_cast<unsigned char*>(this) + kFileBytes);
}

File* AsFile(sqlite3_file* f) { return reinterpret_cast<File*>(f); }

int Fail(File* f, sqlite3_int64 offset, const std::string& what) {
  std::string message =
      "page checksum: '" + f->name + "' at offset " + std::to_string(offset) + ": " + what;
  sqlite3_log(SQLITE_IOERR_DATA, "%s", message.c_str());
  last_failure = std::move(message);
  return SQLITE_IOERR_DATA;
}

// Notes the header of the main file (in a read or write at offset 0 of at least 100 bytes).
// Returns false when a checked file's header no longer reserves the checksum's bytes: reserved
// bytes can grow but never shrink, so that header is damaged.
bool NoteHeader(File* f, const unsigned char* header) {
  if (std::memcmp(header, "SQLite format 3", 16) != 0) return !f->checked;
  bool reserves = header[20] == kReserveBytes;
  if (f->checked && !reserves) return false;
  f->checked = reserves;
  return true;
}

std::uint32_t BigEndian32(const unsigned char* p) {
  return std::uint32_t{p[0]} << 24 | std::uint32_t{p[1]} << 16 | std::uint32_t{p[2]} << 8 |
         std::uint32_t{p[3]};
}

// SQLite's WAL checksum (its file format): over pairs of 32-bit words, in the byte order the log's
// magic number says, continuing from `s`.
void WalSum(bool big_endian, const unsigned char* p, std::size_t n, std::uint32_t s[2]) {
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint32_t x0 = big_endian ? BigEndian32(p + i) : Load32(p + i);
    std::uint32_t x1 = big_endian ? BigEndian32(p + i + 4) : Load32(p + i + 4);
    s[0] += x0 + s[1];
    s[1] += x1 + s[0];
  }
}

std::uint64_t FrameSum(const unsigned char* page, int n) {
  // Over the whole page, its reserved bytes included (they hold no page checksum in the log).
  return PageChecksum(page, static_cast<std::size_t>(n), 0) ^ Load64(page + n - kReserveBytes);
}

// A log found when it is opened (left by a crash, not yet replayed): the checksum of each frame of
// its valid prefix (the frames SQLite's recovery will accept: their chain of SQLite's own frame
// checksums verifies from the header), so that later reads of those frames are verified too. The
// store has checked the whole log before (CheckWal); damage after that point is what this catches.
void LearnFrames(File* f) {
  sqlite3_file* real = f->real();
  sqlite3_int64 size = 0;
  if (real->pMethods->xFileSize(real, &size) != SQLITE_OK || size < 32 + 24 + 512) return;
  unsigned char header[32];
  if (real->pMethods->xRead(real, header, 32, 0) != SQLITE_OK) return;
  std::uint32_t magic = BigEndian32(header);
  auto page_size = static_cast<int>(BigEndian32(header + 8));
  if ((magic & ~1u) != 0x377f0682 || !IsPageSize(page_size)) return;
  bool big_endian = (magic & 1) != 0;
  std::uint32_t sum[2] = {0, 0};
  WalSum(big_endian, header, 24, sum);
  if (sum[0] != BigEndian32(header + 24) || sum[1] != BigEndian32(header + 28)) return;
  const sqlite3_int64 frame_size = 24 + page_size;
  std::vector<unsigned char> frame(static_cast<std::size_t>(frame_size));
  for (sqlite3_int64 at = 32; at + frame_size <= size; at += frame_size) {
    if (real->pMethods->xRead(real, frame.data(), static_cast<int>(frame_size), at) != SQLITE_OK) {
      return;
    }
    if (std::memcmp(frame.data() + 8, header + 16, 8) != 0) return;  // another log's salts
    WalSum(big_endian, frame.data(), 8, sum);
    WalSum(big_endian, frame.data() + 24, static_cast<std::size_t>(page_size), sum);
    if (sum[0] != BigEndian32(frame.data() + 16) || sum[1] != BigEndian32(frame.data() + 20)) {
      return;  // the end of the valid prefix: SQLite reads nothing after it
    }
    f->frames[at + 24] = FrameSum(frame.data() + 24, page_size);
  }
}

int Close(sqlite3_file* file) {
  File* f = AsFile(file);
  sqlite3_file* real = f->real();
  int rc = real->pMethods != nullptr ? real->pMethods->xClose(real) : SQLITE_OK;
  f->~File();
  return rc;
}

int Read(sqlite3_file* file, void* buffer, int n, sqlite3_int64 offset) {
  File* f = AsFile(file);
  sqlite3_file* real = f->real();
  int rc = real->pMethods->xRead(real, buffer, n, offset);
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  auto* bytes = static_cast<unsigned char*>(buffer);
  if (f->kind == Kind::kMain) {
    if (rc == SQLITE_OK && offset == 0 && n >= 100 && !NoteHeader(f, bytes)) {
      return Fail(f, offset,
                  "the header no longer reserves the page checksums (byte 20 is " +
                      std::to_string(bytes[20]) + ", was " + std::to_string(kReserveBytes) + ")");
    }
    if (!f->checked || !IsPageSize(n)) return rc;
    auto page = static_cast<std::uint32_t>(offset / n + 1);
    if (rc == SQLITE_IOERR_SHORT_READ) {
      // Past the end of the file SQLite takes zeros, as it should; inside it, bytes are missing.
      sqlite3_int64 size = 0;
      if (real->pMethods->xFileSize(real, &size) != SQLITE_OK || offset < size) {
        return Fail(f, offset,
                    "page " + std::to_string(page) + " read back short inside the file (" +
                        std::to_string(size) + " bytes)");
      }
      return rc;
    }
    std::uint64_t want = PageChecksum(bytes, static_cast<std::size_t>(n), page);
    std::uint64_t have = Load64(bytes + n - kReserveBytes);
    if (want != have)
      return Fail(f, offset, "page " + std::to_string(page) + " fails its checksum");
    return rc;
  }
  if (f->kind == Kind::kWal && IsPageSize(n)) {
    auto it = f->frames.find(offset);
    if (it == f->frames.end()) return rc;  // not a frame of this log's valid prefix: never read
    if (rc == SQLITE_IOERR_SHORT_READ) {
      return Fail(f, offset, "a write-ahead log frame read back short");
    }
    if (FrameSum(bytes, n) != it->second)
      return Fail(f, offset, "a write-ahead log frame fails its checksum");
  }
  return rc;
}

int Write(sqlite3_file* file, const void* buffer, int n, sqlite3_int64 offset) {
  File* f = AsFile(file);
  sqlite3_file* real = f->real();
  const auto* bytes = static_cast<const unsigned char*>(buffer);
  if (f->kind == Kind::kMain) {
    if (offset == 0 && n >= 100 && !NoteHeader(f, bytes)) {
      return Fail(f, offset, "refusing to write a header that drops the page checksums");
    }
    if (f->checked && IsPageSize(n)) {
      f->scratch.assign(bytes, bytes + n);
      auto page = static_cast<std::uint32_t>(offset / n + 1);
      Store64(PageChecksum(f->scratch.data(), f->scratch.size(), page),
              f->scratch.data() + n - kReserveBytes);
      return real->pMethods->xWrite(real, f->scratch.data(), n, offset);
    }
  } else if (f->kind == Kind::kWal && IsPageSize(n)) {
    f->frames[offset] = FrameSum(bytes, n);
  }
  return real->pMethods->xWrite(real, buffer, n, offset);
}

int Truncate(sqlite3_file* file, sqlite3_int64 size) {
  File* f = AsFile(file);
  if (f->kind == Kind::kWal)
    std::erase_if(f->frames, [&](const auto& e) { return e.first >= size; });
  sqlite3_file* real = f->real();
  return real->pMethods->xTruncate(real, size);
}

int Sync(sqlite3_file* file, int flags) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xSync(real, flags);
}

int FileSize(sqlite3_file* file, sqlite3_int64* size) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xFileSize(real, size);
}

int Lock(sqlite3_file* file, int level) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xLock(real, level);
}

int Unlock(sqlite3_file* file, int level) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xUnlock(real, level);
}

int CheckReservedLock(sqlite3_file* file, int* out) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xCheckReservedLock(real, out);
}

int FileControl(sqlite3_file* file, int op, void* arg) {
  File* f = AsFile(file);
  sqlite3_file* real = f->real();
  int rc = real->pMethods->xFileControl(real, op, arg);
  if (rc == SQLITE_OK && op == SQLITE_FCNTL_VFSNAME) {
    *static_cast<char**>(arg) = sqlite3_mprintf("syncsched-cksum/%z", *static_cast<char**>(arg));
  }
  return rc;
}

int SectorSize(sqlite3_file* file) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xSectorSize(real);
}

int DeviceCharacteristics(sqlite3_file* file) {
  sqlite3_file* real = AsFile(file)->real();
  int characteristics = real->pMethods->xDeviceCharacteristics(real);
#ifdef SQLITE_IOCAP_SUBPAGE_READ
  // Whole pages only (SQLite 3.44+ may read part of a page otherwise): a part cannot be verified.
  characteristics &= ~SQLITE_IOCAP_SUBPAGE_READ;
#endif
  return characteristics;
}

int ShmMap(sqlite3_file* file, int region, int size, int extend, void volatile** out) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xShmMap(real, region, size, extend, out);
}

int ShmLock(sqlite3_file* file, int offset, int n, int flags) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xShmLock(real, offset, n, flags);
}

void ShmBarrier(sqlite3_file* file) {
  sqlite3_file* real = AsFile(file)->real();
  real->pMethods->xShmBarrier(real);
}

int ShmUnmap(sqlite3_file* file, int remove) {
  sqlite3_file* real = AsFile(file)->real();
  return real->pMethods->xShmUnmap(real, remove);
}

int Fetch(sqlite3_file* file, sqlite3_int64 offset, int n, void** out) {
  // No memory-mapped pages: each read goes through Read, where it is verified.
  (void)file;
  (void)offset;
  (void)n;
  *out = nullptr;
  return SQLITE_OK;
}

int Unfetch(sqlite3_file* file, sqlite3_int64 offset, void* p) {
  sqlite3_file* real = AsFile(file)->real();
  if (real->pMethods->iVersion < 3 || real->pMethods->xUnfetch == nullptr) return SQLITE_OK;
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

// ---- The VFS: everything but xOpen passes through to the VFS below (pAppData) ----

sqlite3_vfs* Below(sqlite3_vfs* vfs) { return static_cast<sqlite3_vfs*>(vfs->pAppData); }

int Open(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* file, int flags, int* out_flags) {
  sqlite3_vfs* below = Below(vfs);
  Kind kind = (flags & SQLITE_OPEN_MAIN_DB) != 0 ? Kind::kMain
              : (flags & SQLITE_OPEN_WAL) != 0   ? Kind::kWal
                                                 : Kind::kOther;
  auto* f = new (file) File;
  f->kind = kind;
  if (name != nullptr) f->name = name;
  int rc = below->xOpen(below, name, f->real(), flags, out_flags);
  if (f->real()->pMethods == nullptr) {
    f->~File();
    file->pMethods = nullptr;
    return rc != SQLITE_OK ? rc : SQLITE_CANTOPEN;
  }
  file->pMethods = &kMethods;
  if (rc == SQLITE_OK && kind == Kind::kWal) LearnFrames(f);
  return rc;
}

int Delete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  return Below(vfs)->xDelete(Below(vfs), name, sync_dir);
}
int Access(sqlite3_vfs* vfs, const char* name, int flags, int* out) {
  return Below(vfs)->xAccess(Below(vfs), name, flags, out);
}
int FullPathname(sqlite3_vfs* vfs, const char* name, int n, char* out) {
  return Below(vfs)->xFullPathname(Below(vfs), name, n, out);
}
void* DlOpen(sqlite3_vfs* vfs, const char* name) { return Below(vfs)->xDlOpen(Below(vfs), name); }
void DlError(sqlite3_vfs* vfs, int n, char* out) { Below(vfs)->xDlError(Below(vfs), n, out); }
void (*DlSym(sqlite3_vfs* vfs, void* handle, const char* symbol))(void) {
  return Below(vfs)->xDlSym(Below(vfs), handle, symbol);
}
void DlClose(sqlite3_vfs* vfs, void* handle) { Below(vfs)->xDlClose(Below(vfs), handle); }
int Randomness(sqlite3_vfs* vfs, int n, char* out) {
  return Below(vfs)->xRandomness(Below(vfs), n, out);
}
int Sleep(sqlite3_vfs* vfs, int us) { return Below(vfs)->xSleep(Below(vfs), us); }
int CurrentTime(sqlite3_vfs* vfs, double* out) { return Below(vfs)->xCurrentTime(Below(vfs), out); }
int GetLastError(sqlite3_vfs* vfs, int n, char* out) {
  return Below(vfs)->xGetLastError(Below(vfs), n, out);
}
int CurrentTimeInt64(sqlite3_vfs* vfs, sqlite3_int64* out) {
  sqlite3_vfs* below = Below(vfs);
  if (below->iVersion >= 2 && below->xCurrentTimeInt64 != nullptr) {
    return below->xCurrentTimeInt64(below, out);
  }
  double days = 0;
  int rc = below->xCurrentTime(below, &days);
  *out = static_cast<sqlite3_int64>(days * 86400000.0);
  return rc;
}

// A registered shim: its name and its sqlite3_vfs, which SQLite keeps pointers to for the life of
// the process (never unregistered, never freed).
struct Shim {
  std::string name;
  sqlite3_vfs vfs{};
};

std::mutex shims_mu;
std::map<std::string, Shim*>& Shims() {
  static auto* shims = new std::map<std::string, Shim*>;  // never destroyed (see Shim)
  return *shims;
}

}  // namespace

std::uint64_t PageChecksum(const unsigned char* page, std::size_t size, std::uint32_t page_number) {
  // A Fletcher-like sum of 32-bit words (as cksumvfs's: each word is added into s1, s1 into s2,
  // so that every bit and every position counts), in four independent lanes of 8 bytes each so
  // that a core adds them in parallel (~4x faster than one lane), seeded by constants and the page
  // number: an all-zero page or a page at another place does not verify.
  std::uint32_t s1[4], s2[4];
  for (std::uint32_t i = 0; i < 4; ++i) {
    s1[i] = 0x243F6A88u + i * 0x9E3779B9u + page_number;
    s2[i] = 0x85A308D3u ^ (page_number * 0x9E3779B1u) ^ i;
  }
  std::size_t n = size - kReserveBytes;
  std::size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    for (std::size_t lane = 0; lane < 4; ++lane) {
      const unsigned char* p = page + i + 8 * lane;
      s1[lane] += Load32(p) + s2[lane];
      s2[lane] += Load32(p + 4) + s1[lane];
    }
  }
  for (; i + 8 <= n; i += 8) {
    s1[0] += Load32(page + i) + s2[0];
    s2[0] += Load32(page + i + 4) + s1[0];
  }
  std::uint32_t hi = s1[0] + std::rotl(s1[1], 8) + std::rotl(s1[2], 16) + std::rotl(s1[3], 24);
  std::uint32_t lo = s2[0] + std::rotl(s2[1], 8) + std::rotl(s2[2], 16) + std::rotl(s2[3], 24);
  return (std::uint64_t{hi} << 32) | lo;
}

std::string ShimOver(const std::string& base, std::string* error) {
  std::lock_guard lock(shims_mu);
  auto found = Shims().find(base);
  if (found != Shims().end()) return found->second->name;
  sqlite3_vfs* below = sqlite3_vfs_find(base.empty() ? nullptr : base.c_str());
  if (below == nullptr) {
    *error = base.empty() ? "SQLite has no default VFS" : "no SQLite VFS named '" + base + "'";
    return "";
  }
  auto* shim = new Shim;
  shim->name = base.empty() ? "syncsched-cksum" : "syncsched-cksum+" + base;
  sqlite3_vfs& v = shim->vfs;
  v.iVersion = 2;
  v.szOsFile = static_cast<int>(kFileBytes) + below->szOsFile;
  v.mxPathname = below->mxPathname;
  v.zName = shim->name.c_str();
  v.pAppData = below;
  v.xOpen = Open;
  v.xDelete = Delete;
  v.xAccess = Access;
  v.xFullPathname = FullPathname;
  v.xDlOpen = DlOpen;
  v.xDlError = DlError;
  v.xDlSym = DlSym;
  v.xDlClose = DlClose;
  v.xRandomness = Randomness;
  v.xSleep = Sleep;
  v.xCurrentTime = CurrentTime;
  v.xGetLastError = GetLastError;
  v.xCurrentTimeInt64 = CurrentTimeInt64;
  int rc = sqlite3_vfs_register(&v, /*makeDflt=*/0);
  if (rc != SQLITE_OK) {
    *error = std::string("cannot register the page checksum VFS: ") + sqlite3_errstr(rc);
    delete shim;
    return "";
  }
  Shims().emplace(base, shim);
  return shim->name;
}

std::string TakeLastFailure() { return std::exchange(last_failure, std::string()); }

bool FailureSeen() { return !last_failure.empty(); }

}  // namespace syncsched::store::cksum
