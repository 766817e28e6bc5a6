// Page checksums for the SQLite store: an SQLite VFS shim that sits on top of another VFS (the
// default one, or the one SqliteStoreOptions::vfs names) and makes silently damaged pages errors.
// The idea is SQLite's ext/misc/cksumvfs.c; the code and the checksum are ours.
//
// The main database file: a database whose header reserves exactly kReserveBytes bytes at the end
// of each page (byte 20 of the header; the store sets it when it creates a file, and migrates an
// older file with VACUUM) gets, on every page write, a checksum of the page's other bytes and of
// its page number in those last 8 bytes, and every page read is verified: a mismatch, or a read
// that comes back short inside the file, fails the read with SQLITE_IOERR_DATA. The page number is
// part of the checksum, so a page written at the wrong place, or read from the wrong place, fails
// too, and so does an all-zero page (a hole). A file without the reserved bytes passes through
// unchecked.
//
// The write-ahead log: SQLite checksums each WAL frame itself, but only verifies them when it
// rebuilds the WAL index (at the first open after a crash); later reads of a frame (a page read by
// a transaction, a checkpoint copying the frame into the file) are not verified, and SQLite
// computes the frame's checksum over the page before the VFS sees it, so a page checksum in the
// reserved bytes cannot be written there. Instead the shim keeps a 64-bit checksum of every frame
// written through it (one per frame: 8 bytes per 16 KiB page of log) and verifies each page-sized
// read of such a frame against it: SQLITE_IOERR_DATA on a mismatch or a short read. Frames found in
// a log at open (left by a crash) are verified by the store (CheckWal) and by SQLite's recovery;
// reads of those are not checked again.
//
// Every failure is logged through sqlite3_log(SQLITE_IOERR_DATA, ...) and kept for the thread
// that made the call (TakeLastFailure), so that the store can name the page and the file.
// Memory-mapped I/O is disabled on checked files (a mapped page would bypass xRead).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace syncsched::store::cksum {

// Bytes reserved at the end of each page for its checksum.
inline constexpr int kReserveBytes = 8;

// The name of the checksum shim on top of the VFS `base` (empty: SQLite's default VFS),
// registering it with SQLite on first use (never as the default VFS; it stays registered for the
// life of the process). Empty when `base` is not a registered VFS or registration failed; `*error`
// then says why. Thread-safe.
std::string ShimOver(const std::string& base, std::string* error);

// The checksum of page `page_number` (1-based) whose `size` bytes are at `page`: over every byte
// but the last kReserveBytes. `size` is a multiple of 8, at least 512.
std::uint64_t PageChecksum(const unsigned char* page, std::size_t size, std::uint32_t page_number);

// What the last failed verification on this thread found (which page of which file, and how),
// and forgets it; empty when none since the last call.
std::string TakeLastFailure();

// Whether a verification on this thread has failed since the last TakeLastFailure.
bool FailureSeen();

}  // namespace syncsched::store::cksum
