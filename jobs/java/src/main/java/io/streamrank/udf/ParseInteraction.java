package io.streamrank.udf;

import java.io.IOException;

import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParseException;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.StreamReadConstraints;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;
import org.apache.flink.types.Row;

/**
 * Parses an interaction record once and returns, for each field the job reads, its text
 * (strings as is, an integer as its value's digits, a float as the record writes it, a boolean as
 * true/false; NULL for a missing field, JSON null, an object or an array) and its JSON type
 * (string, integer, float, boolean, null, object, array; NULL when missing). A record that is not
 * one JSON object (trailing content included) gives j_is_object = false. This function only
 * parses: the rules (which types a field may have, what its text must be) are SQL generated from
 * contract/schema.py's RULES, which the Python validator interprets too.
 *
 * <p>Jackson's streaming parser, no tree: fields the job does not read are skipped token by token
 * (still checked for syntax), a repeated key keeps its last value, as a tree would. JFR showed the
 * tree (readTree) as the largest single cost left on the source thread.
 *
 * <p>What counts as JSON follows contract.schema.parse_json (Python's json module) so that both
 * sides reject the same records as not_json: UTF-8 only, no NaN or Infinity literals, nesting at
 * most MAX_JSON_DEPTH deep, and no integer literal of more than 4,300 digits anywhere in the
 * record (CPython's limit on int conversion; a longer float literal is JSON).
 *
 * <p>Declared non-deterministic on purpose: the planner then computes it once per record in its
 * own projection instead of inlining it into every consumer (DLQ, late, ledger and windows).
 * The field order must match contract.schema.JSON_FIELDS.
 */
public class ParseInteraction extends ScalarFunction {
    // Jackson's own number limit (1,000 characters) would reject what Python accepts; the
    // integer-digit rule of Python is applied below instead. Nesting: contract.schema.MAX_JSON_DEPTH
    // (Python's own limit moves with its call stack, so the contract sets one for both sides)
    static final int MAX_JSON_DEPTH = 512;
    static final JsonFactory FACTORY = JsonFactory.builder()
            .streamReadConstraints(StreamReadConstraints.builder().maxNumberLength(Integer.MAX_VALUE)
                    .maxNestingDepth(MAX_JSON_DEPTH).build())
            .build();
    /** CPython's default limit on the digits of an int read from text (sys.get_int_max_str_digits). */
    static final int PYTHON_INT_MAX_DIGITS = 4300;
    private static final String[] FIELDS = {
        "event_id", "user_id", "item_id", "type", "ts", "value", "category", "consent", "request_id"
    };

    @DataTypeHint("ROW<j_is_object BOOLEAN, j_event_id STRING, j_user_id STRING, j_item_id STRING, "
            + "j_type STRING, j_ts STRING, j_value STRING, j_category STRING, j_consent STRING, j_request_id STRING, "
            + "t_event_id STRING, t_user_id STRING, t_item_id STRING, t_type STRING, t_ts STRING, "
            + "t_value STRING, t_category STRING, t_consent STRING, t_request_id STRING>")
    public Row eval(byte[] payload) {
        Row row = new Row(2 * FIELDS.length + 1);
        row.setField(0, false);
        if (payload == null || !pythonUtf8(payload)) {
            return row;
        }
        String[] text = new String[FIELDS.length];
        String[] types = new String[FIELDS.length];
        try (JsonParser p = FACTORY.createParser(payload)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return row;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                int field = index(p.getCurrentName());
                JsonToken value = p.nextToken();
                checkValue(p, value);
                if (field >= 0) {
                    text[field] = scalar(p, value);
                    types[field] = type(p, value);
                }
            }
            if (p.currentToken() != JsonToken.END_OBJECT || p.nextToken() != null) {
                return row;  // not one complete object: trailing content, or truncated
            }
        } catch (IOException | RuntimeException e) {
            return row;
        }
        row.setField(0, true);
        for (int i = 0; i < FIELDS.length; i++) {
            row.setField(i + 1, text[i]);
            row.setField(i + 1 + FIELDS.length, types[i]);
        }
        return row;
    }

    private static int index(String name) {
        for (int i = 0; i < FIELDS.length; i++) {
            if (FIELDS[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    /**
     * Whether the record's bytes decode as contract.schema.parse_json decodes bytes: UTF-8 (a BOM
     * is skipped by both parsers), with surrogates encoded in three bytes let through
     * ('surrogatepass'); overlong forms, code points above U+10FFFF and cut sequences are not.
     * Jackson alone would not refuse every one of these. A zero byte is refused too: JSON in UTF-8
     * never holds one, and it is how Jackson (and json.loads) would take the record for UTF-16 or
     * UTF-32, which RFC 8259 does not allow between systems.
     */
    static boolean pythonUtf8(byte[] b) {
        int i = 0;
        int n = b.length;
        while (i < n) {
            int c = b[i] & 0xFF;
            if (c < 0x80) {
                if (c == 0) {
                    return false;
                }
                i++;
                continue;
            }
            int more;
            int lo = 0x80;
            int hi = 0xBF;  // the allowed range of the second byte
            if (c >= 0xC2 && c <= 0xDF) {
                more = 1;
            } else if (c >= 0xE0 && c <= 0xEF) {
                more = 2;
                lo = c == 0xE0 ? 0xA0 : 0x80;
            } else if (c >= 0xF0 && c <= 0xF4) {
                more = 3;
                lo = c == 0xF0 ? 0x90 : 0x80;
                hi = c == 0xF4 ? 0x8F : 0xBF;
            } else {
                return false;
            }
            if (i + more >= n) {
                return false;  // cut short
            }
            int second = b[i + 1] & 0xFF;
            if (second < lo || second > hi) {
                return false;
            }
            for (int k = 2; k <= more; k++) {
                if ((b[i + k] & 0xC0) != 0x80) {
                    return false;
                }
            }
            i += more + 1;
        }
        return true;
    }

    /**
     * Checks the value whose first token was just read as Python's json would (its integers'
     * digits), and moves past it when it is an object or array.
     */
    static void checkValue(JsonParser p, JsonToken value) throws IOException {
        if (value == JsonToken.START_OBJECT || value == JsonToken.START_ARRAY) {
            skipChecked(p);
        } else if (value == JsonToken.VALUE_NUMBER_INT) {
            checkDigits(p);
        }
    }

    /** Skips an object or array (its start token read), checking its integers as Python would. */
    private static void skipChecked(JsonParser p) throws IOException {
        int depth = 1;
        while (depth > 0) {
            JsonToken t = p.nextToken();
            if (t == null) {
                throw new JsonParseException(p, "truncated");
            } else if (t == JsonToken.START_OBJECT || t == JsonToken.START_ARRAY) {
                depth++;
            } else if (t == JsonToken.END_OBJECT || t == JsonToken.END_ARRAY) {
                depth--;
            } else if (t == JsonToken.VALUE_NUMBER_INT) {
                checkDigits(p);
            }
        }
    }

    private static void checkDigits(JsonParser p) throws IOException {
        int digits = p.getTextLength() - (p.getTextCharacters()[p.getTextOffset()] == '-' ? 1 : 0);
        if (digits > PYTHON_INT_MAX_DIGITS) {
            throw new JsonParseException(p, "an integer of more than " + PYTHON_INT_MAX_DIGITS + " digits");
        }
    }

    /**
     * The field's text. An integer's is its value's digits (Python's int() reads it as the same
     * number, -0 as 0); a float's is the record's own text, which the SQL casts and Python's
     * float() read alike.
     */
    private static String scalar(JsonParser p, JsonToken value) throws IOException {
        switch (value) {
            case VALUE_STRING:
            case VALUE_NUMBER_FLOAT:
                return p.getText();
            case VALUE_NUMBER_INT:
                return String.valueOf(p.getNumberValue());
            case VALUE_TRUE:
                return "true";
            case VALUE_FALSE:
                return "false";
            default:
                return null;  // null, object, array
        }
    }

    private static String type(JsonParser p, JsonToken value) {
        switch (value) {
            case VALUE_STRING:
                return "string";
            case VALUE_NUMBER_INT:
                return "integer";
            case VALUE_NUMBER_FLOAT:
                return "float";
            case VALUE_TRUE:
            case VALUE_FALSE:
                return "boolean";
            case VALUE_NULL:
                return "null";
            case START_OBJECT:
                return "object";
            default:
                return "array";
        }
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }
}
