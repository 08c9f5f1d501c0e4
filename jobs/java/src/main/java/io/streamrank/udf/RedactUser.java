package io.streamrank.udf;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * redact_user(record, key_env): a rejected record's text (DLQ, late topic) with the value of every
 * "user_id" key in it, at any depth, a string (cut short or not) or a number, replaced by its
 * pseudonym (io.streamrank.udf.Pseudonym over the value's text as written, escapes included), so
 * rejected records keep everything but the raw id. A record in which no such value can be found
 * (not JSON enough, an array, a user_id that is null or an object) may still hold the id anywhere,
 * so its text is withheld: WITHHELD says where the record is (the DLQ entry keeps its topic,
 * partition and offset).
 *
 * Values are scanned by hand rather than by a regex: a backtracking group over a record-sized
 * string recurses once per character in java.util.regex, and a 50 KB user_id would overflow the
 * stack and restart the job forever.
 */
public class RedactUser extends Pseudonym {
    private static final Pattern USER_ID_KEY = Pattern.compile("\"user_id\"\\s*+:\\s*+");

    static final String WITHHELD = "(withheld under privacy.pseudonymize: no user_id field to pseudonymize; "
            + "the record is at its src_topic, src_partition and src_offset)";

    @Override
    public String eval(String record, String keyEnv) {
        if (record == null) {
            return null;
        }
        Matcher m = USER_ID_KEY.matcher(record);
        StringBuilder out = new StringBuilder(record.length() + 16);
        int copied = 0;
        int from = 0;
        while (from < record.length() && m.find(from)) {
            int start = m.end();
            int end = stringEnd(record, start);
            String raw;
            if (end >= 0) {
                int close = Math.min(end, record.length());
                raw = record.substring(start + 1, close);
                end = Math.min(close + 1, record.length());
            } else {
                end = numberEnd(record, start);
                if (end < 0) {
                    from = start;
                    continue;
                }
                raw = record.substring(start, end);
            }
            out.append(record, copied, start).append('"').append(super.eval(raw, keyEnv)).append('"');
            copied = end;
            from = end;
        }
        if (copied == 0) {
            return WITHHELD;
        }
        return out.append(record, copied, record.length()).toString();
    }

    /** Where the string value starting at i ends (its closing quote, or the text's end if cut), or -1. */
    private static int stringEnd(String s, int i) {
        if (i >= s.length() || s.charAt(i) != '"') {
            return -1;
        }
        int j = i + 1;
        while (j < s.length() && s.charAt(j) != '"') {
            j += s.charAt(j) == '\\' ? 2 : 1;
        }
        return j;
    }

    /** Where the number starting at i ends, or -1 when no number starts there. */
    private static int numberEnd(String s, int i) {
        int j = i < s.length() && s.charAt(i) == '-' ? i + 1 : i;
        if (j >= s.length() || s.charAt(j) < '0' || s.charAt(j) > '9') {
            return -1;
        }
        while (j < s.length() && "0123456789.eE+-".indexOf(s.charAt(j)) >= 0) {
            j++;
        }
        return j;
    }
}
