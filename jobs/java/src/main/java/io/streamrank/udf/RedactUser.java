package io.streamrank.udf;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * redact_user(record, key_env): a rejected record's text (DLQ, late topic) with every top-level
 * looking "user_id" value, a string (cut short or not) or a number, replaced by its pseudonym
 * (io.streamrank.udf.Pseudonym over the value's text as written), so rejected records keep
 * everything but the raw id. A record in which no user_id value can be found (not JSON enough,
 * an array) may still hold the id anywhere, so its text is withheld: WITHHELD says where the
 * record is (the DLQ entry keeps its topic, partition and offset).
 */
public class RedactUser extends Pseudonym {
    private static final Pattern USER_ID = Pattern.compile(
            "(\"user_id\"\\s*:\\s*)(?:\"((?:[^\"\\\\]|\\\\.)*)\"?|(-?[0-9][0-9.eE+-]*))");

    static final String WITHHELD = "(withheld under privacy.pseudonymize: no user_id field to pseudonymize; "
            + "the record is at its src_topic, src_partition and src_offset)";

    @Override
    public String eval(String record, String keyEnv) {
        if (record == null) {
            return null;
        }
        Matcher m = USER_ID.matcher(record);
        if (!m.find()) {
            return WITHHELD;
        }
        StringBuilder out = new StringBuilder(record.length() + 16);
        do {
            String raw = m.group(2) != null ? m.group(2) : m.group(3);
            m.appendReplacement(out, Matcher.quoteReplacement(m.group(1) + "\"" + super.eval(raw, keyEnv) + "\""));
        } while (m.find());
        m.appendTail(out);
        return out.toString();
    }
}
