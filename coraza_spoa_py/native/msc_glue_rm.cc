/* Rule matches from the engine's own structured data, never from its text lines.
 *
 * Why (docs/engine.md "Rule matches"): libmodsecurity's text line for a match quotes the
 * client's value before the rule's own [file]/[line]/[id] fields, so a parser of those lines
 * reports whatever id, file or line the client wrote there. Here every field comes from the
 * engine's C++ objects: the transaction's list of rule messages (modsecurity::RuleMessage,
 * transaction.h m_rulesMessages), the rule that made each one (RuleMessage::m_rule), the
 * rule set's SecDefaultAction actions and SecRuleUpdateActionById updates, and the TX
 * collection for the anomaly score. Built against Debian's libmodsecurity-dev headers of the
 * same 3.0.9 the library is (build.py); nothing here runs on Python's side or takes the GIL.
 *
 * Every function is extern "C" and catches every exception: a C++ exception must never cross
 * into msc_glue.c's C frames (they have no unwind tables, and the engine thread would abort).
 */
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>
#include <string>

#include "modsecurity/actions/action.h"
#include "modsecurity/collection/collection.h"
#include "modsecurity/collection/collections.h"
#include "modsecurity/modsecurity.h"
#include "modsecurity/rule_message.h"
#include "modsecurity/rule_with_actions.h"
#include "modsecurity/rules_set.h"
#include "modsecurity/transaction.h"

extern "C" {
#include "msc_glue.h"
}

using modsecurity::RuleMessage;
using modsecurity::RuleWithActions;
using modsecurity::Transaction;
using modsecurity::actions::Action;

/* RuleWithActions keeps its disruptive action (deny, drop, redirect, ...) in a private member
 * with no accessor in 3.0.9 (rule_with_actions.h). An explicit template instantiation may name
 * a private member ([temp.explicit]: access checks do not apply to its arguments): this reads
 * it without redefining the class, and the compiler checks the member's name and type against
 * the installed header, which is the library's own (the -dev package of the same version). */
namespace {

/* cs_set_match_text: whether a record carries the engine's text line (its `raw`) */
std::atomic<int> match_text{1};
struct DisruptiveActionOf {
    using type = Action *RuleWithActions::*;
    friend type member(DisruptiveActionOf);
};
template <typename Tag, typename Tag::type Member>
struct Expose {
    friend typename Tag::type member(Tag) { return Member; }
};
template struct Expose<DisruptiveActionOf, &RuleWithActions::m_disruptiveAction>;

/* the limits of libmodsecurity's own text line (RuleMessage::_details): long matched values
 * stay out of the records, which the hub logs */
const size_t DATA_LIMIT = 200;
const size_t URI_LIMIT = 200;

bool grow(cs_log *log, size_t more) {
    size_t need = log->len + more;
    if (need <= log->cap) {
        return true;
    }
    size_t cap = log->cap ? log->cap : 1024;
    while (cap < need) {
        cap *= 2;
    }
    auto *grown = static_cast<unsigned char *>(realloc(log->buf, cap));
    if (grown == nullptr) {
        return false;
    }
    log->buf = grown;
    log->cap = cap;
    return true;
}

void put_u32(cs_log *log, uint32_t value) {
    unsigned char *at = log->buf + log->len;
    at[0] = static_cast<unsigned char>(value & 0xff);
    at[1] = static_cast<unsigned char>((value >> 8) & 0xff);
    at[2] = static_cast<unsigned char>((value >> 16) & 0xff);
    at[3] = static_cast<unsigned char>((value >> 24) & 0xff);
    log->len += 4;
}

void put_i64(cs_log *log, int64_t value) {
    uint64_t bits = static_cast<uint64_t>(value);
    put_u32(log, static_cast<uint32_t>(bits & 0xffffffffu));
    put_u32(log, static_cast<uint32_t>(bits >> 32));
}

/* at most `limit` bytes, cut at a UTF-8 character boundary */
size_t capped(const std::string &text, size_t limit) {
    if (text.size() <= limit) {
        return text.size();
    }
    size_t n = limit;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xc0) == 0x80) {
        n--;
    }
    return n;
}

void put_str(cs_log *log, const std::string &text, size_t limit = SIZE_MAX) {
    size_t n = capped(text, limit);
    if (n > UINT32_MAX) {
        n = UINT32_MAX;
    }
    put_u32(log, static_cast<uint32_t>(n));
    memcpy(log->buf + log->len, text.data(), n);
    log->len += n;
}

const std::string EMPTY;

const std::string &deref(const std::shared_ptr<std::string> &text) {
    return text ? *text : EMPTY;
}

/* CS_ACTION_* of a disruptive action's name (`block` aside: action_named). */
int action_code(const std::string &name) {
    return name == "deny"       ? CS_ACTION_DENY
           : name == "drop"     ? CS_ACTION_DROP
           : name == "redirect" ? CS_ACTION_REDIRECT
                                : CS_ACTION_OTHER;
}

/* The disruptive action a `block` stands for: the phase's SecDefaultAction one (Block::evaluate
 * runs each disruptive default action of the rule's phase in turn; the last one's wins). */
int default_action(Transaction *tx, const RuleWithActions *rule) {
    int action = CS_ACTION_OTHER;
    int phase = rule->getPhase();
    if (tx->m_rules == nullptr || phase < 0 || phase >= modsecurity::Phases::NUMBER_OF_PHASES) {
        return action;
    }
    for (auto &a : tx->m_rules->m_defaultActions[phase]) {
        if (a && a->isDisruptive() && a->m_name) {
            action = action_code(*a->m_name);
        }
    }
    return action;
}

int action_named(Transaction *tx, const RuleWithActions *rule, const std::string &name) {
    return name == "block" ? default_action(tx, rule) : action_code(name);
}

/* Which disruptive action the rule that made a disruptive message ran, in the order of
 * RuleWithActions::executeActionsAfterFullMatch (3.0.9): actions added by
 * SecRuleUpdateActionById run instead of the rule's own; otherwise `block` (the phase's
 * default action), then the rule's own disruptive action, which wins when both run. */
int disruptive_action(Transaction *tx, const RuleWithActions *rule) {
    if (rule == nullptr) {
        return CS_ACTION_OTHER;
    }
    if (tx->m_rules != nullptr) {
        auto updates =
            tx->m_rules->m_exceptions.m_action_pos_update_target_by_id.equal_range(rule->m_ruleId);
        if (updates.first != updates.second) {
            int action = CS_ACTION_OTHER;
            for (auto it = updates.first; it != updates.second; ++it) {
                const Action *a = it->second.get();
                if (a && a->m_name &&
                    (const_cast<Action *>(a)->isDisruptive() || *a->m_name == "block")) {
                    action = action_named(tx, rule, *a->m_name);
                }
            }
            return action;
        }
    }
    int action = rule->hasBlockAction() ? default_action(tx, rule) : CS_ACTION_OTHER;
    const Action *own = rule->*member(DisruptiveActionOf());
    if (own != nullptr && own->m_name) {
        action = action_named(tx, rule, *own->m_name);
    }
    return action;
}

/* One record: see msc_glue.h "cs_log records". */
void put_message(cs_log *log, Transaction *tx, const RuleMessage &rm, int disruptive_status) {
    int action = CS_ACTION_NONE;
    std::string raw;
    bool text = match_text.load(std::memory_order_relaxed) != 0;
    if (rm.m_isDisruptive) {
        action = disruptive_action(tx, rm.m_rule);
        if (text) {
            /* the line the engine itself hands over in the intervention */
            raw = RuleMessage::log(&rm, RuleMessage::ClientLogMessageInfo, disruptive_status);
        }
    } else if (text) {
        raw = RuleMessage::log(&rm, 0, -1); /* the line a text log callback would get */
    }
    size_t size = 8 + 4 * 6 + 4 * 11 + rm.m_data.size() + rm.m_message.size() +
                  deref(rm.m_ruleFile).size() + rm.m_rev.size() + rm.m_ver.size() +
                  deref(rm.m_serverIpAddress).size() + deref(rm.m_uriNoQueryStringDecoded).size() +
                  raw.size();
    for (const std::string &tag : rm.m_tags) {
        size += 4 + tag.size();
    }
    if (!grow(log, size)) {
        return; /* a match lost is better than a crash; the verdict does not depend on it */
    }
    put_i64(log, rm.m_ruleId);
    put_u32(log, static_cast<uint32_t>(rm.m_ruleLine));
    put_u32(log, static_cast<uint32_t>(rm.m_phase));
    put_u32(log, static_cast<uint32_t>(rm.m_severity));
    put_u32(log, static_cast<uint32_t>(rm.m_maturity));
    put_u32(log, static_cast<uint32_t>(rm.m_accuracy));
    put_u32(log, static_cast<uint32_t>(action));
    put_str(log, deref(rm.m_ruleFile));
    put_str(log, rm.m_message);
    put_str(log, rm.m_data, DATA_LIMIT);
    put_str(log, rm.m_rev);
    put_str(log, rm.m_ver);
    put_str(log, deref(rm.m_serverIpAddress));
    put_str(log, deref(rm.m_uriNoQueryStringDecoded), URI_LIMIT);
    put_str(log, raw);
    put_u32(log, static_cast<uint32_t>(rm.m_tags.size()));
    for (const std::string &tag : rm.m_tags) {
        put_str(log, tag);
    }
}

/* The messages are read from the transaction, so the callback has nothing to do; it must
 * exist (without one the library prints every match to stderr), and with
 * RuleMessageLogProperty the library no longer formats a text line for it. */
void ignore_message(void *, const void *) {}

long long tx_number(Transaction *tx, const char *name) {
    if (tx->m_collections.m_tx_collection == nullptr) {
        return -1;
    }
    std::unique_ptr<std::string> value = tx->m_collections.m_tx_collection->resolveFirst(name);
    if (!value || value->empty()) {
        return -1;
    }
    char *end = nullptr;
    long long number = strtoll(value->c_str(), &end, 10);
    return (end != nullptr && *end == '\0') ? number : -1;
}
}  // namespace

extern "C" {

void cs_install_log_callback(void *msc) {
    try {
        static_cast<modsecurity::ModSecurity *>(msc)->setServerLogCb(
            ignore_message, modsecurity::RuleMessageLogProperty);
    } catch (...) {
    }
}

void cs_set_match_text(int on) { match_text.store(on != 0, std::memory_order_relaxed); }

void cs_read_messages(void *t, cs_log *log, int disruptive_status) {
    try {
        auto *tx = static_cast<Transaction *>(t);
        const std::list<RuleMessage> &messages = tx->m_rulesMessages;
        size_t total = messages.size();
        if (total <= log->seen) {
            log->seen = total;
            return;
        }
        /* the new ones are at the end of the list */
        auto it = messages.end();
        for (size_t n = total - log->seen; n > 0; n--) {
            --it;
        }
        for (; it != messages.end(); ++it) {
            put_message(log, tx, *it, disruptive_status);
        }
        log->seen = total;
    } catch (...) {
        /* an allocation failed: the matches of this step are lost, the verdict is not */
    }
}

long long cs_anomaly_score(void *t) {
    try {
        auto *tx = static_cast<Transaction *>(t);
        /* CRS 4's blocking score, else CRS 3's sum (949060-949063: the number 949110 checks) */
        long long score = tx_number(tx, "blocking_inbound_anomaly_score");
        return score >= 0 ? score : tx_number(tx, "anomaly_score");
    } catch (...) {
        return -1;
    }
}

}  // extern "C"
