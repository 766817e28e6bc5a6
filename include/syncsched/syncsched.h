// The umbrella header: everything a host needs to embed syncsched.
#pragma once

#include "syncsched/clock.h"
#include "syncsched/engine.h"
#include "syncsched/export.h"
#include "syncsched/frequency.h"
#include "syncsched/options.h"
#include "syncsched/status.h"
#include "syncsched/types.h"
