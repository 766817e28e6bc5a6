#include "syncsched/syncsched.h"
#include <gtest/gtest.h>
TEST(PublicApi, Placeholder) {}
